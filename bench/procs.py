"""What the benchmark reads from /proc: per-process CPU time, RSS and PSS (sampled), and the
kernel's UDP drop counters; and stopping a process it started, by pid."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

SAMPLE_INTERVAL = 0.2  # seconds between memory/CPU samples
POLL_INTERVAL = 0.05  # seconds between looks at a process
MAX_DESCENDANTS = 64
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
KIB = 1024  # /proc reports kB meaning KiB
MB = 1_000_000
TCP_LISTEN = "0A"  # /proc/net/tcp "st" of a listening socket


def read_proc(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read()
    except OSError:  # the process is gone
        return None


def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        text = read_proc(f"/proc/{pid}/task/{task}/children") or ""
        found.extend(int(child) for child in text.split())
    return found


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    queue = [pid]
    while queue and len(found) < MAX_DESCENDANTS:
        for child in children(queue.pop()):
            if child not in found:
                found.append(child)
                queue.append(child)
    return found


def cmdline(pid: int) -> str:
    return (read_proc(f"/proc/{pid}/cmdline") or "").replace("\0", " ")


def status_kb(text: str, key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match[1]) if match else 0


def stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 on (field k is at index k - 3): comm may hold spaces."""
    text = read_proc(f"/proc/{pid}/stat")
    return text[text.rindex(")") + 2:].split() if text else None


def udp_rcvbuf_errors() -> int:
    """The host's count of UDP datagrams dropped because a receive buffer was full."""
    lines = [line.split() for line in (read_proc("/proc/net/snmp") or "").splitlines()
             if line.startswith("Udp:")]
    if len(lines) < 2 or "RcvbufErrors" not in lines[0]:
        return 0
    return int(lines[1][lines[0].index("RcvbufErrors")])


def _sockets_on_port(kind: str, port: int) -> list[list[str]]:
    """The rows of /proc/net/<kind> and <kind>6 whose local port is port."""
    rows = []
    for table in (f"/proc/net/{kind}", f"/proc/net/{kind}6"):
        for line in (read_proc(table) or "").splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 10 and int(fields[1].rsplit(":", 1)[1], 16) == port:
                rows.append(fields)
    return rows


def udp_socket_drops(port: int) -> int | None:
    """The kernel's drop count (receive buffer full) summed over the UDP sockets bound to
    port; None if there is none (read it before the receiver closes its socket)."""
    rows = [fields for fields in _sockets_on_port("udp", port) if len(fields) >= 13]
    return sum(int(fields[12]) for fields in rows) if rows else None


def port_bound(transport: str, port: int) -> bool:
    """A TCP socket listens on port, or a UDP socket is bound to it."""
    rows = _sockets_on_port(transport, port)
    return any(fields[3] == TCP_LISTEN for fields in rows) if transport == "tcp" else bool(rows)


@dataclass
class ProcStats:
    pid: int
    role: str
    start_ticks: str  # /proc/PID/stat field 22: tells this process from a later one with its pid
    cpu_seconds: float = 0.0
    hwm_kb: int = 0
    peak_rss_kb: int = 0
    peak_pss_kb: int = 0


class Sampler:
    """Samples RSS and PSS (summed over a process and its descendants) and each one's CPU
    time. role_of(pid, root) names a process ("child" until it has a better name)."""

    def __init__(self, root: int, role_of: Callable[[int, int], str]) -> None:
        self.root = root
        self.role_of = role_of
        self.procs: dict[int, ProcStats] = {}
        self.peak_rss_kb = 0
        self.peak_pss_kb = 0
        self.samples = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            self.sample()

    def sample(self) -> None:
        with self._lock:
            self._sample()

    def _sample(self) -> None:
        rss_total = pss_total = 0
        for pid in [self.root, *descendants(self.root)]:
            status, fields = read_proc(f"/proc/{pid}/status"), stat_fields(pid)
            if status is None or fields is None:
                continue
            proc = self.procs.get(pid)
            if proc is None or proc.start_ticks != fields[19]:
                proc = self.procs[pid] = ProcStats(pid, self.role_of(pid, self.root), fields[19])
            elif proc.role == "child":  # seen between fork and setting its process title
                proc.role = self.role_of(pid, self.root)
            rss = status_kb(status, "VmRSS")
            pss = status_kb(read_proc(f"/proc/{pid}/smaps_rollup") or "", "Pss")
            proc.cpu_seconds = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            proc.hwm_kb = max(proc.hwm_kb, status_kb(status, "VmHWM"))
            proc.peak_rss_kb = max(proc.peak_rss_kb, rss)
            proc.peak_pss_kb = max(proc.peak_pss_kb, pss)
            rss_total += rss
            pss_total += pss
        self.peak_rss_kb = max(self.peak_rss_kb, rss_total)
        self.peak_pss_kb = max(self.peak_pss_kb, pss_total)
        self.samples += 1

    def cpu_seconds(self) -> float:
        return sum(proc.cpu_seconds for proc in self.procs.values())

    def still_ours(self, proc: ProcStats) -> bool:
        fields = stat_fields(proc.pid)
        return fields is not None and fields[19] == proc.start_ticks and fields[0] != "Z"


def stop_process(proc: subprocess.Popen[bytes], timeout: float, name: str,
                 sampler: Sampler | None = None) -> int | None:
    """SIGTERM to proc's pid, a bounded wait, then SIGKILL; then SIGKILL by pid for any of
    its children (known to sampler) still running after 5 s. Returns the exit status."""
    if sampler:
        sampler.stop()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):  # a second Ctrl-C kills
            print(f"warning: {name} did not stop after SIGTERM; killing it", file=sys.stderr)
            proc.kill()
            proc.wait(timeout=10)
    if sampler is None:
        return proc.returncode
    leftovers = [child for child in sampler.procs.values() if child.pid != proc.pid]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(map(sampler.still_ours, leftovers)):
        time.sleep(POLL_INTERVAL)
    for child in filter(sampler.still_ours, leftovers):
        print(f"warning: killing left-over {name} {child.role} process {child.pid}",
              file=sys.stderr)
        os.kill(child.pid, signal.SIGKILL)
    return proc.returncode
