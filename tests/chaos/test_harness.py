"""The accounting itself: what counts as lost, unread and dropped (no relay involved)."""

from __future__ import annotations

import pytest

from tests.chaos import harness
from tests.chaos.harness import Evidence, Sender, TcpSender, UdpSender

pytestmark = pytest.mark.chaos


def message(sender: str, number: int) -> str:
    return harness.syslog_message(sender, number, b"ab12").decode()


def tcp(spans: list[list[int]]) -> Sender:
    sender = TcpSender("t0", 1, rate=None)
    sender.spans = spans
    return sender


def udp(spans: list[list[int]]) -> Sender:
    sender = UdpSender("u0", 1, rate=1)
    sender.spans = spans
    return sender


def test_gap_below_the_highest_read_is_lost_above_it_unread() -> None:
    sender = tcp([[0, 10], [10, 20]])
    delivered = [message("t0", n) for n in (0, 1, 2, 4, 10, 11)]
    counts = harness.tally([sender], delivered, spooled=[message("t0", 3)])
    assert (counts.sent, counts.delivered, counts.spooled, counts.lost) == (20, 6, 1, 0)
    assert counts.unread == 5 + 8
    counts = harness.tally([sender], delivered)  # 3 was read (4 arrived) but is gone
    assert counts.lost == 1 and counts.lost_examples == ["t0-3"]


def test_ring_and_spool_evidence_marks_what_was_read() -> None:
    sender = tcp([[0, 10]])
    evidence = Evidence()
    evidence.add([message("t0", 7)])  # seen in the ring after a kill, then never delivered
    counts = harness.tally([sender], [message("t0", n) for n in range(5)], evidence=evidence)
    assert counts.lost == 3 and counts.unread == 2


def test_duplicates_foreign_and_cut_tails() -> None:
    sender = tcp([[0, 3]])
    delivered = [message("t0", 0), message("t0", 0), message("t0", 1), message("t0", 2),
                 message("t0", 9), "<13>1 - chaos app - - - seq=t0-2:ab"]  # a cut tail
    counts = harness.tally([sender], delivered)
    assert (counts.duplicates, counts.foreign, counts.lost) == (1, 1, 0)


def test_udp_drops_counted_are_not_lost() -> None:
    sender = udp([[0, 10]])
    delivered = [message("u0", n) for n in (0, 1, 5, 6)]
    assert harness.tally([sender], delivered, udp_dropped=3).lost == 0  # 2, 3 and 4
    assert harness.tally([sender], delivered, udp_dropped=2).lost == 1
    # Every datagram reached the relay: the tail 7-9 must be covered by drops too.
    assert harness.tally([sender], delivered, udp_dropped=4, udp_all_read=True).lost == 2
    assert harness.tally([sender], delivered, udp_dropped=6, udp_all_read=True).lost == 0


def test_order_per_sender() -> None:
    delivered = [message("t0", 0), message("t1", 5), message("t0", 2), message("t0", 1),
                 message("t0", 2), message("t1", 6)]
    assert harness.out_of_order(delivered) == {"t0": 1, "t1": 0}


def test_markdown_table() -> None:
    result = harness.Result.of("x", "load | pipes", 0.0, harness.Tally(sent=3, delivered=3))
    table = harness.markdown_table([result]).splitlines()
    assert len(table) == 3 and table[0].startswith("| scenario |")
    assert table[2].count("|") == table[0].count("|")
