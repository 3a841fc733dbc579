"""Crash safety: SIGKILL while messages flow loses nothing the relay had read."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
from pathlib import Path

import pytest

from kinesyslog._fast.ring import Ring
from tests.e2e.relay_process import Relay, free_ports, wait_for
from tests.e2e.test_relay import relay_args, s3_events

pytestmark = pytest.mark.e2e
SEQUENCE = re.compile(rb"seq=(\d+)")


class Sender(threading.Thread):
    """Sends numbered messages over one TCP connection until stopped or refused."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.sent = 0
        self.halt = threading.Event()

    def run(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            while not self.halt.is_set() and self.sent < 2_000_000:
                batch = b"".join(b"<13>1 - h app - - - crash test seq=%d %s\n"
                                 % (self.sent + i, b"p" * 120) for i in range(500))
                try:
                    sock.sendall(batch)
                except OSError:
                    return
                self.sent += 500


def highest_sequence_read(spool: Path) -> int:
    """The last message the killed relay had written to its ring (TCP keeps order)."""
    ring = Ring(str(spool / "ring.mmap"), 0)
    try:
        highest = -1
        for _ in range(100_000):
            entries = ring.read_batch(10_000)
            if not entries:
                break
            for entry in entries:
                highest = max(highest, int(SEQUENCE.search(entry[4]).group(1)))
        return highest
    finally:
        ring.close()


def process_gone(pid: int) -> bool:
    """The process has exited: no /proc entry (it may vanish between two reads), or a zombie
    waiting for its parent."""
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):  # ESRCH while the kernel reaps it
        return True


@pytest.mark.parametrize("victims", [("worker", "listener"), ("listener",)])
def test_sigkill_loses_nothing_read(moto_server, tmp_path: Path, victims: tuple[str, ...]) -> None:
    spool = tmp_path / "spool"
    port = free_ports()
    args = relay_args(moto_server, spool, port, "--flush-size", "262144", "--flush-interval", "30")
    relay = Relay(args, env=moto_server.env).start()
    sender = Sender(port)
    try:
        sender.start()
        wait_for(lambda: sender.sent >= 60_000, 60, message="messages flowing")
        children = relay.children()
        pids = {"listener": relay.pid, **children}
        for victim in victims:
            os.kill(pids[victim], signal.SIGKILL)
        relay.wait(30)
        for pid in children.values():  # orphaned children exit by themselves; make sure
            wait_for(lambda p=pid: process_gone(p), 30, message=f"child {pid} gone")
    finally:
        sender.halt.set()
        sender.join(10)
        relay.kill()

    spooled_highest = highest_sequence_read(spool)
    relay = Relay(relay_args(moto_server, spool, port), env=moto_server.env).start()
    assert relay.stop() == 0, relay.log  # the final flush and upload deliver the replay

    received = {int(SEQUENCE.search(e["message"].encode()).group(1))
                for _, _, e in s3_events(moto_server)}
    highest = max(spooled_highest, max(received, default=-1))
    assert highest >= 1000, "the relay should have read plenty before the kill"
    missing = set(range(highest + 1)) - received
    assert not missing, f"{len(missing)} messages lost, e.g. {sorted(missing)[:10]}"
