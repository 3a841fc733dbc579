"""Scenario 1: SIGKILL at random moments, of the whole process group, of the worker alone and
of the uploader alone, under numbered TCP and UDP load; the relay restarts on the same spool
each time. Nothing the relay had read may be lost."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from tests.chaos import harness
from tests.chaos.harness import Evidence, Monitor, Result, UdpSender
from tests.e2e.relay_process import Relay
from tests.fake_firehose import FakeFirehose

pytestmark = pytest.mark.chaos

VICTIMS = ("group", "worker", "uploader")
SHUTDOWN_TIMEOUT = 2.0  # after a child's death the listener drains and exits; keep it short


def kill_plan(rng: random.Random, kills: int) -> list[str]:
    """Each victim equally often, in a random order."""
    plan = [VICTIMS[i % len(VICTIMS)] for i in range(kills)]
    rng.shuffle(plan)
    return plan


def test_sigkill_at_random_moments(fake_firehose: FakeFirehose, tmp_path: Path,
                                   prof: harness.Profile) -> None:
    seed = int(os.environ.get(harness.SEED_ENV) or random.SystemRandom().randrange(2**32))
    print(f"\nscenario 1 seed={seed} ({harness.SEED_ENV}={seed} repeats it)")
    rng = random.Random(seed)
    plan = kill_plan(rng, prof.kills)
    spool = tmp_path / "spool"
    port, metrics_port = harness.ports(2)
    args = harness.chaos_args(spool, port, "--shutdown-timeout", str(SHUTDOWN_TIMEOUT),
                              metrics_port=metrics_port)
    started = time.monotonic()
    evidence = Evidence()
    monitor = Monitor(metrics_port)
    relays: list[Relay] = []
    senders: list[harness.Sender] = []
    downtimes: list[float] = []  # from each kill to the restarted relay's readiness
    udp_dropped = 0
    with harness.stopped_on_exit(relays):
        relay = harness.start_watched(args, fake_firehose, relays, monitor)
        monitor.start()
        senders = harness.start_senders(port, prof)
        udp = next(s for s in senders if isinstance(s, UdpSender))
        try:
            for number, victim in enumerate(plan):
                time.sleep(rng.uniform(0.05, 2.5))  # a random moment of the load
                udp.close_span()
                monitor.sample()  # the last metrics of this incarnation
                assert relay.process is not None and relay.process.poll() is None, \
                    f"the relay exited by itself ({relay.process and relay.process.returncode})" \
                    f" before kill {number}" + harness.relay_log_tail(relay)
                children = harness.children(relay)
                killed_at = time.monotonic()
                if victim == "group":
                    os.killpg(relay.pid, signal.SIGKILL)
                else:
                    os.kill(children[victim], signal.SIGKILL)
                code = harness.wait_gone(relay, 60)
                udp_dropped += harness.logged_udp_drops(relay)
                # A dead child makes the listener exit non-zero (for systemd to restart it).
                expected = "-9" if victim == "group" else "non-zero"
                assert code == -signal.SIGKILL if victim == "group" else code > 0, \
                    f"kill {number} ({victim}): exit {code}, expected {expected}" \
                    + harness.relay_log_tail(relay)
                evidence.snapshot(spool)  # what the killed relay had read
                relay = harness.new_relay(args, fake_firehose).start()
                downtimes.append(time.monotonic() - killed_at)
                relays.append(relay)
                monitor.watch(relay)
                udp.open_span()
            time.sleep(1.0)
        finally:
            harness.stop_senders(senders)
        settled = harness.wait_settled(fake_firehose, spool, 60)
        monitor.sample()
        udp.close_span()
        code = relay.stop()
        monitor.stop()
        udp_dropped += harness.logged_udp_drops(relay)
        assert code == 0, relay.log[-3000:]
    evidence.snapshot(spool)
    udp_dropped = max(udp_dropped, monitor.counted_udp_drops())
    counts = harness.tally(senders, harness.delivered_messages(fake_firehose),
                           harness.spool_messages(spool) + harness.ring_messages(spool),
                           evidence, udp_dropped)
    quarantined = len(harness.spool_messages(spool, "corrupt"))
    kinds = {victim: plan.count(victim) for victim in VICTIMS}
    harness.record(Result.of(
        "1 SIGKILL", prof.describe_load(), started, counts, monitor,
        recovery=f"kill to ready again: mean {sum(downtimes) / len(downtimes):.1f} s, "
                 f"max {max(downtimes):.1f} s",
        notes=f"seed {seed}; {len(plan)} kills {kinds}; {quarantined} quarantined"))
    print(counts.summary())
    assert counts.lost == 0, counts.summary() + "".join(
        harness.relay_log_tail(r, 1500) for r in relays[-3:])
    assert counts.foreign == 0, counts.summary()
    assert settled, "the spool did not drain after the last restart: " + counts.summary()
    assert counts.delivered > prof.kills * 100, "the load should have flowed between kills"
