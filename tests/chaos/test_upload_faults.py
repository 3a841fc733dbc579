"""Scenario 4: upload faults under steady load: partial failures, throttling, 5xx, dropped
connections, slow answers, lost answers (the records stored, the answer later than the
client waits) and hanging calls.

Measured per fault: PutRecordBatch calls per second while it lasts (from the stand-in's call
log), the time from its end to the first accepted record and to the upload of the backlog it
left. Targets: delivery resumes within 10 s after a fault ends; one hanging call (or lost
answer) holds delivery up for at most 15 s."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.chaos import harness
from tests.chaos.harness import Monitor, Result
from tests.e2e.relay_process import Relay, wait_for
from tests.fake_firehose import (
    INTERNAL_ERROR,
    SERVICE_UNAVAILABLE,
    THROTTLING,
    Call,
    Delay,
    Drop,
    FakeFirehose,
    Fault,
    Hang,
    Partial,
)

pytestmark = pytest.mark.chaos

RESUME_TARGET = 10.0  # seconds from the end of a fault to the first accepted record
HANG_TARGET = 15.0  # seconds one hanging call may hold delivery up
SLOW_ANSWER = 1.5  # seconds, well within any sane client timeout
WAIT_LIMIT = 60.0  # bound of each wait for recovery


@dataclass
class Measure:
    fault: str
    calls_per_second: float = 0.0
    to_first_record: float | None = None  # after the fault ended
    to_backlog_uploaded: float | None = None
    blocked: float | None = None  # hang / lost answer: from the call to the next call

    def text(self) -> str:
        def seconds(value: float | None) -> str:
            return "never" if value is None else f"{value:.1f} s"

        if self.blocked is not None or self.fault in ("hang", "lost answer"):
            return f"{self.fault}: blocked {seconds(self.blocked)}"
        return (f"{self.fault}: {self.calls_per_second:.1f} calls/s, first record "
                f"{seconds(self.to_first_record)}, backlog {seconds(self.to_backlog_uploaded)}")


def recover(fake: FakeFirehose, spool: Path, measure: Measure, ended: float,
            ended_wall: float) -> None:
    """Measures the time to the first accepted record and to the backlog's upload."""
    deadline = ended + WAIT_LIMIT
    while time.monotonic() < deadline:
        first = fake.first_accepted_after(ended)
        if first is not None and measure.to_first_record is None:
            measure.to_first_record = first - ended
        if measure.to_first_record is not None \
                and harness.backlog_older_than(spool, ended_wall) == 0:
            measure.to_backlog_uploaded = time.monotonic() - ended
            return
        time.sleep(0.05)


def timed_fault(fake: FakeFirehose, spool: Path, name: str, policy: Callable[[int], Fault],
                seconds: float) -> Measure:
    measure = Measure(name)
    began = time.monotonic()
    fake.set_policy("PutRecordBatch", policy)
    time.sleep(seconds)
    fake.set_policy("PutRecordBatch", None)
    ended, ended_wall = time.monotonic(), time.time()
    fake.release()
    measure.calls_per_second = fake.call_rate("PutRecordBatch", began, ended)
    recover(fake, spool, measure, ended, ended_wall)
    return measure


def single_stall(fake: FakeFirehose, spool: Path, name: str, fault: Fault,
                 outcome: str) -> Measure:
    """One call gets ``fault``; measures how long it holds delivery up (from its arrival to
    the relay's next call), then how long the backlog takes."""
    measure = Measure(name)
    since = time.monotonic()
    fake.script("PutRecordBatch", fault)

    def puts() -> list[Call]:
        return [c for c in fake.calls if c.operation == "PutRecordBatch" and c.at >= since]

    wait_for(lambda: any(c.outcome == outcome for c in puts()), 30, interval=0.05,
             message=f"a {name} call")
    stalled = next(c for c in puts() if c.outcome == outcome)
    deadline = stalled.at + 2 * HANG_TARGET + 10  # well past the target: a clear failure

    def next_call() -> Call | None:
        return next((c for c in puts() if c.at > stalled.at), None)

    while next_call() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    following = next_call()
    fake.release()  # whatever still waits
    if following is not None:
        measure.blocked = following.at - stalled.at
    recover(fake, spool, measure, time.monotonic(), time.time())
    return measure


def run_faults(fake: FakeFirehose, tmp_path: Path, prof: harness.Profile, title: str,
               faults: Callable[[FakeFirehose, Path], list[Measure]]) -> list[Measure]:
    spool = tmp_path / "spool"
    port, metrics_port = harness.ports(2)
    args = harness.chaos_args(spool, port, "--shutdown-timeout", "30", metrics_port=metrics_port)
    started = time.monotonic()
    monitor = Monitor(metrics_port)
    relays: list[Relay] = []
    senders: list[harness.Sender] = []
    with harness.stopped_on_exit(relays):
        relay = harness.start_watched(args, fake, relays, monitor)
        monitor.start()
        try:
            senders = harness.start_senders(port, prof)
            time.sleep(1.0)
            measures = faults(fake, spool)
            time.sleep(1.0)
        finally:
            harness.stop_senders(senders)
        ending = harness.wind_down(relay, monitor, fake, spool, senders)
        code, counts, delivered_all = ending.code, ending.counts, ending.delivered_all
    outcomes = sorted({c.outcome for c in fake.calls if c.operation == "PutRecordBatch"})
    harness.record(Result.of(
        title, prof.describe_load(), started, counts, monitor,
        recovery="; ".join(m.text() for m in measures),
        notes=f"outcomes {', '.join(outcomes)}"))
    print(counts.summary())
    assert code == 0, relay.log[-3000:]
    assert counts.lost == 0, counts.summary() + harness.relay_log_tail(relay)
    assert delivered_all and counts.tcp_unread == 0 and counts.spooled == 0, \
        "every TCP message must be delivered in the end: " + counts.summary() \
        + harness.relay_log_tail(relay)
    return measures


def test_error_faults(fake_firehose: FakeFirehose, tmp_path: Path,
                      prof: harness.Profile) -> None:
    def faults(fake: FakeFirehose, spool: Path) -> list[Measure]:
        server_errors = [INTERNAL_ERROR, SERVICE_UNAVAILABLE]
        return [
            timed_fault(fake, spool, "partial", lambda n: Partial(range(n % 2, 500, 2)),
                        prof.fault),
            timed_fault(fake, spool, "throttling", lambda n: THROTTLING, prof.fault),
            timed_fault(fake, spool, "5xx", lambda n: server_errors[n % 2], prof.fault),
            timed_fault(fake, spool, "connection dropped", lambda n: Drop(), prof.fault),
        ]

    measures = run_faults(fake_firehose, tmp_path, prof, "4 faults: errors", faults)
    for measure in measures:
        assert measure.to_first_record is not None \
            and measure.to_first_record <= RESUME_TARGET, \
            f"delivery must resume within {RESUME_TARGET:g} s: {measure.text()}"


def test_slow_lost_and_hanging_answers(fake_firehose: FakeFirehose, tmp_path: Path,
                                       prof: harness.Profile) -> None:
    def faults(fake: FakeFirehose, spool: Path) -> list[Measure]:
        return [
            timed_fault(fake, spool, "slow answers", lambda n: Delay(SLOW_ANSWER), prof.fault),
            single_stall(fake, spool, "lost answer", Delay(3600), "late"),
            single_stall(fake, spool, "hang", Hang(3600), "hang"),
        ]

    measures = run_faults(fake_firehose, tmp_path, prof, "4 faults: slow/lost/hang", faults)
    slow, lost, hang = measures
    assert slow.to_first_record is not None and slow.to_first_record <= RESUME_TARGET, \
        slow.text()
    for measure in (lost, hang):
        assert measure.blocked is not None and measure.blocked <= HANG_TARGET, \
            f"one stalled call may hold delivery up for {HANG_TARGET:g} s at most: " \
            + measure.text()
