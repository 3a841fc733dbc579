"""Scenario 5: SIGTERM under load, and SIGTERM during a Firehose outage: exit 0 within
--shutdown-timeout (and its grace), what could not be uploaded stays spooled, and a restart
uploads it. Nothing read may be lost."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.chaos import harness
from tests.chaos.harness import Evidence, Monitor, Result, UdpSender
from tests.e2e.relay_process import Relay
from tests.fake_firehose import FakeFirehose

pytestmark = pytest.mark.chaos

SHUTDOWN_TIMEOUT = 3.0
STOP_GRACE = 15.0  # beyond --shutdown-timeout: the final flush, the listener's own exit


@pytest.mark.parametrize("outage", [False, True], ids=["under-load", "during-outage"])
def test_sigterm(fake_firehose: FakeFirehose, tmp_path: Path, prof: harness.Profile,
                 outage: bool) -> None:
    spool = tmp_path / "spool"
    port, metrics_port = harness.ports(2)
    args = harness.chaos_args(spool, port, "--shutdown-timeout", str(SHUTDOWN_TIMEOUT),
                              metrics_port=metrics_port)
    started = time.monotonic()
    monitor = Monitor(metrics_port)
    evidence = Evidence()
    relays: list[Relay] = []
    senders: list[harness.Sender] = []
    with harness.stopped_on_exit(relays):
        relay = harness.start_watched(args, fake_firehose, relays, monitor)
        monitor.start()
        try:
            senders = harness.start_senders(port, prof, incompressible=outage)
            udp = next(s for s in senders if isinstance(s, UdpSender))
            time.sleep(1.0)
            if outage:
                fake_firehose.refuse_connections()
            time.sleep(max(prof.load, prof.outage if outage else 0.0))
            udp.close_span()
            monitor.sample()
            stopping = time.monotonic()
            code = relay.stop(timeout=SHUTDOWN_TIMEOUT + STOP_GRACE + 30)
            stop_seconds = time.monotonic() - stopping
        finally:
            harness.stop_senders(senders)
        dropped = harness.logged_udp_drops(relay)
        left = len(harness.spool_files(spool))
        evidence.snapshot(spool)
        if outage:
            fake_firehose.accept_connections()
        restarted = time.monotonic()
        relay = harness.start_watched(args, fake_firehose, relays, monitor)
        settled = harness.wait_settled(fake_firehose, spool, 60)
        uploaded_after = time.monotonic() - restarted
        second = relay.stop()
        monitor.stop()
        dropped += harness.logged_udp_drops(relay)
    counts = harness.tally(senders, harness.delivered_messages(fake_firehose),
                           harness.spool_messages(spool) + harness.ring_messages(spool),
                           evidence, max(dropped, monitor.counted_udp_drops()),
                           udp_all_read=True)
    name = "5 SIGTERM during outage" if outage else "5 SIGTERM under load"
    harness.record(Result.of(
        name, prof.describe_load(), started, counts, monitor,
        recovery=f"restart uploaded the rest in {uploaded_after:.1f} s",
        notes=f"stopped in {stop_seconds:.1f} s (exit {code}), {left} record(s) left spooled, "
              f"TCP connections {[getattr(s, 'connections', 0) for s in senders]}"))
    print(counts.summary())
    assert code == 0, relay.log[-3000:]
    assert stop_seconds <= SHUTDOWN_TIMEOUT + STOP_GRACE, f"stopping took {stop_seconds:.1f} s"
    if outage:
        assert left > 0, "records should have stayed spooled through the outage"
    assert second == 0 and settled, relay.log[-3000:]
    assert counts.lost == 0, counts.summary() + harness.relay_log_tail(relay)
    assert counts.spooled == 0, "the restart uploads what was left: " + counts.summary() \
        + harness.relay_log_tail(relay)
