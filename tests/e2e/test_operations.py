"""Operating the real relay: sd_notify under a service manager, and `kinesyslog dump`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.e2e.relay_process import Relay, free_ports, kinesyslog_command, send_tcp

pytestmark = pytest.mark.e2e


def test_sd_notify_ready_and_stopping_then_dump(tmp_path: Path) -> None:
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(30)
        port = free_ports()
        out = tmp_path / "out"
        relay = Relay(["--output-dir", str(out), "--spool-dir", str(tmp_path / "spool"),
                       "--address", "127.0.0.1", "--tcp-port", str(port)],
                      env={"NOTIFY_SOCKET": str(notify_path)}).start()
        try:
            assert notify.recv(4096) == b"READY=1"
            send_tcp("127.0.0.1", port, b"<13>first\n<14>second line\n")
        finally:
            assert relay.stop() == 0, relay.log
        assert notify.recv(4096) == b"STOPPING=1"

    result = subprocess.run([*kinesyslog_command(), "dump", str(out)], capture_output=True,
                            text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert (result.returncode, result.stdout) == (0, "<13>first\n<14>second line\n")
    result = subprocess.run([*kinesyslog_command(), "dump", "--json", "--group",
                             f"/kinesyslog/syslog/{port}", str(out)], capture_output=True,
                            text=True, timeout=60, stdin=subprocess.DEVNULL)
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(e["logGroup"], e["logStream"], e["message"]) for e in events] == [
        (f"/kinesyslog/syslog/{port}", "127.0.0.1", "<13>first"),
        (f"/kinesyslog/syslog/{port}", "127.0.0.1", "<14>second line")]
    (out / "broken.gz").write_bytes(b"\x1f\x8b\x08 not really")
    result = subprocess.run([*kinesyslog_command(), "dump", str(out)], capture_output=True,
                            text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert "broken.gz" in result.stderr and result.stdout.count("\n") == 2


def test_sigint_drains_like_sigterm(tmp_path: Path) -> None:
    import signal

    port = free_ports()
    out = tmp_path / "out"
    relay = Relay(["--output-dir", str(out), "--spool-dir", str(tmp_path / "spool"),
                   "--address", "127.0.0.1", "--tcp-port", str(port)]).start()
    try:
        # Unterminated at close: delivered when the connection ends at shutdown.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"<13>complete\n<13>unterminated tail")
            relay.process.send_signal(signal.SIGINT)
            assert relay.wait(60) == 0, relay.log
    finally:
        relay.kill()
    result = subprocess.run([*kinesyslog_command(), "dump", str(out)], capture_output=True,
                            text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.stdout == "<13>complete\n<13>unterminated tail\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root")
def test_a_ring_that_cannot_be_created_exits_73_with_one_line(tmp_path: Path) -> None:
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(full)], check=True)
    try:
        relay = Relay(["--output-dir", str(tmp_path / "out"), "--spool-dir", str(full),
                       "--address", "127.0.0.1", "--tcp-port", str(free_ports())])
        relay.start(wait_ready=False)
        try:
            assert relay.wait(60) == 73, relay.log
        finally:
            relay.kill()
        errors = [line for line in relay.lines if " ERROR " in line]
        assert len(errors) == 1, relay.log
        assert f"--spool-dir {full}: cannot create the ring file" in errors[0]
        assert "No space left on device" in errors[0]
        assert "Traceback" not in relay.log
    finally:
        subprocess.run(["umount", str(full)], check=True)
