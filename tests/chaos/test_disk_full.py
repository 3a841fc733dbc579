"""Scenario 3: the spool's file system fills up while Firehose is down.

Expected: the relay does not exit; the worker keeps what it read, pauses intake (TCP is
back-pressured), counts kinesyslog_spool_write_errors_total{errno="ENOSPC"}, and /healthz
answers 503 naming the spool. Once Firehose is back, uploads free the space and everything
read is delivered. Needs root (a small tmpfs is mounted for the spool)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos import harness
from tests.chaos.harness import Monitor, Result, TcpSender
from tests.e2e.relay_process import Relay
from tests.fake_firehose import INTERNAL_ERROR, FakeFirehose

pytestmark = pytest.mark.chaos

TMPFS_SIZE = "24m"  # the ring file takes 16 MiB of it: about 8 MiB are left for records


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the spool needs root (CI runs as root)")
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0755",
                              "tmpfs", str(mount_point)], capture_output=True, text=True,
                             timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        unmounted = subprocess.run(["umount", str(mount_point)], capture_output=True,
                                   text=True, timeout=30)
        if unmounted.returncode != 0:  # still busy: detach it, the kernel frees it later
            subprocess.run(["umount", "-l", str(mount_point)], timeout=30, check=False)


def spool_write_errors(text: str) -> float:
    return harness.metric(text, "kinesyslog_spool_write_errors_total", errno="ENOSPC")


def test_spool_disk_full(fake_firehose: FakeFirehose, small_filesystem: Path,
                         prof: harness.Profile) -> None:
    spool = small_filesystem / "spool"
    port, metrics_port = harness.ports(2)
    args = harness.chaos_args(spool, port, "--shutdown-timeout", "30", metrics_port=metrics_port)
    started = time.monotonic()
    monitor = Monitor(metrics_port)
    relays: list[Relay] = []
    senders: list[harness.Sender] = []
    with harness.stopped_on_exit(relays):
        relay = harness.start_watched(args, fake_firehose, relays, monitor)
        monitor.start()
        try:
            fake_firehose.set_policy("PutRecordBatch", lambda number: INTERNAL_ERROR)
            senders = harness.start_senders(port, prof, incompressible=True)
            burst = TcpSender("b0", port, rate=None, size=400, incompressible=True, batch=200)
            senders.append(burst)
            burst.start()

            harness.wait_relay(relay, lambda: spool_write_errors(harness.scrape(metrics_port)) > 0,
                               60, interval=0.2,
                               message="kinesyslog_spool_write_errors_total{errno=\"ENOSPC\"}")
            full_at = time.monotonic() - started
            harness.wait_relay(relay, lambda: burst.stalled_for() >= 1.0, 30, interval=0.1,
                               message="the TCP sender to be blocked by back-pressure")
            deadline = time.monotonic() + max(prof.outage, 3.0)
            while time.monotonic() < deadline and relay.process.poll() is None:
                time.sleep(0.1)
            assert relay.process.poll() is None, \
                "the relay exited on a full disk" + harness.relay_log_tail(relay)
            status, reason = harness.health(metrics_port)
            errors = spool_write_errors(harness.scrape(metrics_port))
            stalled = burst.stalled_for()
            fake_firehose.set_policy("PutRecordBatch", None)  # Firehose is back
            first, drained = harness.await_recovery(relay, fake_firehose, spool, "the outage")
        finally:
            harness.stop_senders(senders)
        ending = harness.wind_down(relay, monitor, fake_firehose, spool, senders)
        code, counts, delivered_all = ending.code, ending.counts, ending.delivered_all
    harness.record(Result.of(
        "3 spool disk full", prof.describe_load() + " + 1 unthrottled TCP", started, counts,
        monitor, recovery=f"{first:.1f} s first record, {drained:.1f} s backlog",
        notes=f"tmpfs {TMPFS_SIZE}, full after {full_at:.1f} s; {errors:g} ENOSPC counted; "
              f"TCP stalled {stalled:.1f} s; healthz {status} {reason.strip()!r}"))
    print(counts.summary())
    assert code == 0, harness.relay_log_tail(relay)
    assert counts.lost == 0, counts.summary() + harness.relay_log_tail(relay)
    assert stalled >= 1.0, "TCP intake should pause while the spool cannot be written"
    assert status == 503 and "spool" in reason.lower(), (status, reason)
    assert delivered_all and counts.tcp_unread == 0 and counts.spooled == 0, \
        "everything read must be delivered once space returns: " + counts.summary() \
        + harness.relay_log_tail(relay)
