"""The listener process's supervision: a dead child stops the relay, health says why."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from kinesyslog import constants
from kinesyslog._fast.ring import Ring
from kinesyslog.config import Config
from kinesyslog.shared import SharedState
from kinesyslog.supervisor import Supervisor, describe_status

WAIT = 5.0


def child(body_exit_code: int | None) -> int:
    """A child that exits with the code at once, or (None) waits for a signal."""
    pid = os.fork()
    if pid == 0:
        if body_exit_code is None:
            signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
            signal.signal(signal.SIGUSR1, lambda *_: os._exit(0))
            time.sleep(WAIT)
            os._exit(9)
        os._exit(body_exit_code)
    return pid


def test_a_dead_child_stops_the_relay_and_the_other_is_told(tmp_path: Path) -> None:
    config = Config(stream=None, spool_dir=tmp_path, output_dir=tmp_path / "out")
    ring = Ring(str(config.ring_path), constants.RING_MIN_CAPACITY)
    uploader = child(None)
    worker = child(3)
    supervisor = Supervisor(config, ring, uploader, worker, SharedState())
    try:
        assert supervisor.processes_problem() is None
        deadline = time.monotonic() + WAIT
        while worker in supervisor.children and time.monotonic() < deadline:
            supervisor.check_children()
            time.sleep(0.01)
        assert supervisor.children == {uploader: "uploader"}
        assert supervisor.exit_code == 1 and supervisor.stopping
        assert supervisor.processes_problem() == "shutting down"
        supervisor.wait_for("uploader", uploader, time.monotonic() + WAIT)  # SIGTERM ended it
        assert supervisor.children == {}
        assert supervisor.exit_code == 1
    finally:
        for pid in (uploader, worker):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        supervisor.loop.close()
        ring.close()


def test_a_missing_process_is_the_health_problem(tmp_path: Path) -> None:
    config = Config(stream=None, spool_dir=tmp_path, output_dir=tmp_path / "out")
    ring = Ring(str(config.ring_path), constants.RING_MIN_CAPACITY)
    supervisor = Supervisor(config, ring, 1_000_001, 1_000_002, SharedState())
    try:
        assert supervisor.health() == "starting"  # no listener yet
        del supervisor.children[1_000_002]
        assert supervisor.processes_problem() == "the worker process is not running"
    finally:
        supervisor.loop.close()
        ring.close()


def test_exit_statuses_are_described() -> None:
    assert describe_status(3 << 8) == "exit status 3"
    assert describe_status(signal.SIGKILL) == "killed by signal SIGKILL"
