"""Runs the real `kinesyslog listen` as a subprocess and talks to it over loopback."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterable
from pathlib import Path

START_TIMEOUT = 30.0
STOP_TIMEOUT = 60.0


def kinesyslog_command() -> list[str]:
    """The installed entry point beside this interpreter, else the module."""
    executable = Path(sys.executable).parent / "kinesyslog"
    if executable.exists():
        return [str(executable)]
    return [sys.executable, "-m", "kinesyslog"]


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (net.ipv4.ip_local_port_range)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_handed_out: set[int] = set()  # never the same port twice in one test session


def _unused_port(binds: Iterable[tuple[int, int]]) -> int:
    """A port that every (family, kind) in binds can bind on loopback, chosen below the
    kernel's ephemeral range: an outgoing connection (the test's own, moto's, the relay's
    to Firehose) may take any free ephemeral port as its local port, also one chosen here a
    moment before the relay binds it, which made the relay exit with "address already in
    use". Below the range only an explicit bind takes a port."""
    binds = list(binds)
    low = max(_ephemeral_low(), 10_001)
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(10_000, low)
        if port in _handed_out:
            continue
        try:
            for family, kind in binds:
                with socket.socket(family, kind) as sock:
                    sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", port))
        except OSError:
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port found below the ephemeral range")


def free_port(kind: int = socket.SOCK_STREAM, family: int = socket.AF_INET) -> int:
    """A port free for kind on family's loopback address (see _unused_port)."""
    return _unused_port([(family, kind)])


def free_ports() -> int:
    """A port number free for both TCP and UDP on IPv4 and IPv6 loopback."""
    return _unused_port([(family, kind) for family in (socket.AF_INET, socket.AF_INET6)
                         for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM)])


class Relay:
    """One `kinesyslog listen` process; stderr is collected for assertions."""

    def __init__(self, args: Iterable[str], env: dict[str, str] | None = None,
                 command: list[str] | None = None) -> None:
        self.args = [*(command or kinesyslog_command()), "listen", *args]
        self.env = {**os.environ, **(env or {})}
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.process: subprocess.Popen[str] | None = None

    def start(self, wait_ready: bool = True) -> Relay:
        self.process = subprocess.Popen(self.args, env=self.env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True, errors="replace")
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        if wait_ready and not self._ready.wait(START_TIMEOUT):
            self.kill()
            raise AssertionError("relay did not become ready:\n" + self.log)
        if wait_ready and self.process.poll() is not None:
            raise AssertionError("relay exited during start-up:\n" + self.log)
        return self

    def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if "kinesyslog ready" in line:
                self._ready.set()
        self._ready.set()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def child_pids(self) -> dict[str, int]:
        """{'worker': pid, 'uploader': pid} from /proc (process titles)."""
        children: dict[str, int] = {}
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                try:
                    title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                except FileNotFoundError:
                    continue
                for role in ("worker", "uploader"):
                    if f"kinesyslog: {role}".encode() in title:
                        children[role] = int(pid)
        return children

    def children(self, timeout: float = 10.0) -> dict[str, int]:
        """child_pids() once both children are there: a child just forked still carries the
        listener's title until it set its own."""
        deadline = time.monotonic() + timeout
        while True:
            children = self.child_pids()
            if set(children) == {"worker", "uploader"} or time.monotonic() > deadline:
                return children
            time.sleep(0.05)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("relay did not stop after SIGTERM:\n" + self.log) from None
        self._reader.join(10)
        return code

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        code = self.process.wait(timeout)
        self._reader.join(10)
        return code

    def kill(self) -> None:
        """SIGKILL the relay and any child still alive."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            children = self.child_pids()
        except OSError:
            children = {}
        for pid in [self.pid, *children.values()]:
            with contextlib.suppress(ProcessLookupError):  # already gone
                os.kill(pid, signal.SIGKILL)
        self.process.wait(10)


def wait_for(predicate, timeout: float, interval: float = 0.05, message: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}")
        time.sleep(interval)


DECODE_CHUNK = 64 * 1024  # fed to the inflater at a time: its unused_data is never larger


def decode_records(data: bytes) -> list[dict]:
    """Records from concatenated gzip members, as Firehose writes them to S3; in time linear
    in the data however many members it holds."""
    records = []
    view = memoryview(data)
    position = 0
    while position < len(view):
        inflater = zlib.decompressobj(31)
        parts = []
        while not inflater.eof:
            chunk = view[position:position + DECODE_CHUNK]
            assert chunk, "truncated gzip member"
            parts.append(inflater.decompress(chunk))
            position += len(chunk) - len(inflater.unused_data)
        records.append(json.loads(b"".join(parts)))
    return records


def events_of(records: Iterable[dict]) -> list[tuple[str, str, dict]]:
    return [(r["logGroup"], r["logStream"], e) for r in records for e in r["logEvents"]]


def send_tcp(host: str, port: int, payload: bytes) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect((host, port))
        sock.sendall(payload)


def send_udp(host: str, port: int, datagrams: Iterable[bytes]) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        for datagram in datagrams:
            sock.sendto(datagram, (host, port))


def octet_counted(messages: Iterable[bytes]) -> bytes:
    return b"".join(b"%d %s" % (len(m), m) for m in messages)
