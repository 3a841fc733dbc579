"""Shared machinery of the chaos scenarios: numbered load, accounting, memory, results.

Every message carries ``seq=<sender>-<n>:<padding>:eom``. A sender keeps *spans*: runs of
numbers within which the relay reads in sending order (one TCP connection; for UDP, one
relay incarnation). The accounting (``tally``) only calls a message lost if the relay
provably read it: some message of the same span with a higher number was found delivered,
spooled or in the ring file. Messages above the highest one found were never read (they sat
in kernel buffers when the relay was killed, or were refused) and are reported as unread.
UDP datagrams the relay dropped and counted in its metrics are reported apart, not as lost.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import re
import signal
import socket
import ssl
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kinesyslog._fast.ring import Ring
from tests.e2e.relay_process import (
    Relay,
    decode_records,
    events_of,
    free_ports,
    kinesyslog_command,
    wait_for,
)
from tests.e2e.test_faults import args_for
from tests.e2e.test_metrics import fetch, sample
from tests.fake_firehose import FakeFirehose

SEQUENCE = re.compile(r"seq=([a-z0-9]+)-(\d+):[0-9a-z]*:eom")
RESULTS_ENV = "KINESYSLOG_CHAOS_RESULTS"  # a file the rows are appended to, as JSON lines
MODE_ENV = "KINESYSLOG_CHAOS"  # "long" for the long form
SEED_ENV = "KINESYSLOG_CHAOS_SEED"
MIB = 1024 * 1024
RING_FILE = "ring.mmap"


# --- Profiles ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Profile:
    """How hard and how long the scenarios push."""

    name: str
    kills: int  # SIGKILLs in scenario 1
    outage: float  # seconds of each Firehose outage (scenarios 2, 3, 5)
    fault: float  # seconds of each upload fault (scenario 4)
    tcp_rate: int  # numbered messages per second over TCP, all senders together
    tcp_senders: int
    udp_rate: int  # numbered datagrams per second
    load: float  # seconds of plain load where a scenario needs some
    idle_connections: int  # scenario 6
    max_connections: int
    max_per_source: int
    idle_timeout: float  # --idle-timeout: longer than opening the idle connections takes
    abuse: float  # seconds of bad input in scenario 6

    def describe_load(self, udp: bool = True) -> str:
        text = f"{self.tcp_rate}/s TCP x{self.tcp_senders}"
        return f"{text} + {self.udp_rate}/s UDP" if udp else text


CI = Profile(name="ci", kills=6, outage=6.0, fault=4.0, tcp_rate=2000, tcp_senders=2,
             udp_rate=100, load=3.0, idle_connections=1500, max_connections=600,
             max_per_source=100, idle_timeout=4.0, abuse=6.0)
LONG = Profile(name="long", kills=24, outage=30.0, fault=15.0, tcp_rate=10_000, tcp_senders=4,
               udp_rate=200, load=20.0, idle_connections=5000, max_connections=2000,
               max_per_source=400, idle_timeout=10.0, abuse=30.0)


def profile() -> Profile:
    return LONG if os.environ.get(MODE_ENV, "").lower() == "long" else CI


def raise_fd_limit() -> None:
    """Thousands of client sockets, and a relay (which inherits the limit) serving them."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65_536 if hard == resource.RLIM_INFINITY else min(hard, 65_536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


# --- Numbered messages -------------------------------------------------------------------

def padding(count: int, size: int, incompressible: bool) -> list[bytes]:
    if not incompressible:
        return [b"p" * size] * count
    hexed = os.urandom(count * size // 2 + 1).hex().encode()
    return [hexed[i * size:(i + 1) * size] for i in range(count)]


def syslog_message(sender: str, number: int, pad: bytes) -> bytes:
    return b"<13>1 - chaos app - - - seq=%s-%d:%s:eom" % (sender.encode(), number, pad)


def gelf_message(sender: str, number: int, pad: bytes) -> bytes:
    """A GELF 1.1 document; the relay delivers its JSON text as received."""
    return json.dumps({"version": "1.1", "host": "chaos", "timestamp": time.time(),
                       "short_message": f"seq={sender}-{number}:{pad.decode()}:eom"}).encode()


def parse(message: str) -> tuple[str, int] | None:
    match = SEQUENCE.search(message)
    return (match.group(1), int(match.group(2))) if match else None


class Sender(threading.Thread):
    """Common parts: spans of numbers, halting, a bounded run time."""

    transport = "tcp"

    def __init__(self, name: str, *, max_seconds: float,
                 encode: Callable[[str, int, bytes], bytes] = syslog_message) -> None:
        super().__init__(name=f"sender-{name}", daemon=True)
        self.sender = name
        self.encode = encode
        self.spans: list[list[int]] = []  # [start, end): numbers handed to the kernel
        self.next = 0
        self.halt = threading.Event()
        self.max_seconds = max_seconds
        self.error: str | None = None

    @property
    def sent(self) -> int:
        return sum(end - start for start, end in self.spans)

    def stop(self, timeout: float = 10.0) -> None:
        self.halt.set()
        if self.is_alive():
            self.join(timeout)
        assert not self.is_alive(), f"{self.name} did not stop"


class TcpSender(Sender):
    """Numbered messages over TCP (LF framing), at ``rate`` per second or as fast as the
    relay reads. Reconnects after a failure (the relay was killed or restarted), each
    connection opening a new span. Partly written messages are not counted as sent (their
    number is skipped; the relay may deliver the cut tail, which has no ``:eom``)."""

    def __init__(self, name: str, port: int, *, rate: float | None, source: str = "127.0.0.1",
                 size: int = 100, incompressible: bool = False, batch: int = 100,
                 reconnect: bool = True, max_seconds: float = 900.0,
                 wrap: Callable[[socket.socket], socket.socket] | None = None,
                 encode: Callable[[str, int, bytes], bytes] = syslog_message) -> None:
        super().__init__(name, max_seconds=max_seconds, encode=encode)
        self.port = port
        self.rate = rate
        self.source = source
        self.size = size
        self.incompressible = incompressible
        self.batch = batch
        self.reconnect = reconnect
        self.wrap = wrap
        self.connections = 0
        self.connect_failures = 0
        self.sending_since: float | None = None  # a send waits for the relay since then
        self.last_progress = time.monotonic()

    def stalled_for(self) -> float:
        """Seconds the current send has made no progress (back-pressure), else 0."""
        if self.sending_since is None:
            return 0.0
        return time.monotonic() - max(self.sending_since, self.last_progress)

    def run(self) -> None:
        started = time.monotonic()
        deadline = started + self.max_seconds
        while not self.halt.is_set() and time.monotonic() < deadline:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind((self.source, 0))
                sock.settimeout(2.0)
                sock.connect(("127.0.0.1", self.port))
                if self.wrap is not None:
                    sock = self.wrap(sock)  # a TLS handshake, within the 2 s
            except OSError:
                sock.close()
                self.connect_failures += 1
                if not self.reconnect:
                    self.error = "connect failed"
                    return
                self.halt.wait(0.05)
                continue
            self.connections += 1
            span = [self.next, self.next]
            self.spans.append(span)
            sock.settimeout(0.2)
            with sock:
                while not self.halt.is_set() and time.monotonic() < deadline:
                    count = self.batch
                    if self.rate is not None:
                        count = min(count, int((time.monotonic() - started) * self.rate)
                                    - self.sent)
                        if count <= 0:
                            self.halt.wait(0.005)
                            continue
                    if not self._send(sock, count, span):
                        break
            if not self.reconnect:
                return

    def _send(self, sock: socket.socket, count: int, span: list[int]) -> bool:
        first = self.next
        messages = [self.encode(self.sender, first + i, pad) + b"\n"
                    for i, pad in enumerate(padding(count, self.size, self.incompressible))]
        ends = []
        total = 0
        for message in messages:
            total += len(message)
            ends.append(total)
        data = memoryview(b"".join(messages))
        offset = 0
        self.sending_since = self.last_progress = time.monotonic()
        ok = True
        try:
            while offset < total:
                if self.halt.is_set():
                    ok = False
                    break
                try:
                    offset += sock.send(data[offset:])
                    self.last_progress = time.monotonic()
                except (socket.timeout, ssl.SSLWantWriteError):
                    continue  # back-pressure: the relay is not reading
                except OSError:
                    ok = False
                    break
        finally:
            self.sending_since = None
        complete = bisect.bisect_right(ends, offset)
        span[1] = first + complete
        partial = complete < count and offset > (ends[complete - 1] if complete else 0)
        self.next = first + complete + (1 if partial else 0)
        return ok


class UdpSender(Sender):
    """Numbered datagrams at ``rate`` per second. ``close_span()`` pauses it (call it just
    before the relay is killed or stopped), ``open_span()`` resumes with a new span."""

    transport = "udp"

    def __init__(self, name: str, port: int, *, rate: float, source: str = "127.0.0.1",
                 size: int = 100, max_seconds: float = 900.0,
                 encode: Callable[[str, int, bytes], bytes] = syslog_message) -> None:
        super().__init__(name, max_seconds=max_seconds, encode=encode)
        self.port = port
        self.rate = rate
        self.source = source
        self.size = size
        self._lock = threading.Lock()
        self._paused = False
        self.spans.append([0, 0])

    def close_span(self) -> None:
        with self._lock:
            self._paused = True

    def open_span(self) -> None:
        with self._lock:
            self.spans.append([self.next, self.next])
            self._paused = False

    def run(self) -> None:
        started = time.monotonic()
        deadline = started + self.max_seconds
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((self.source, 0))
            budget = 0.0
            last = started
            while not self.halt.is_set() and time.monotonic() < deadline:
                now = time.monotonic()
                budget = min(budget + (now - last) * self.rate, self.rate)
                last = now
                while budget >= 1 and not self.halt.is_set():
                    with self._lock:
                        if self._paused:
                            budget = 0
                            break
                        number = self.next
                        try:
                            sock.sendto(self.encode(self.sender, number,
                                                    padding(1, self.size, False)[0]),
                                        ("127.0.0.1", self.port))
                        except OSError:
                            budget = 0
                            break
                        self.next += 1
                        self.spans[-1][1] = self.next
                    budget -= 1
                self.halt.wait(0.01)


def start_senders(port: int, prof: Profile, *, udp: bool = True, source: str = "127.0.0.1",
                  encode: Callable[[str, int, bytes], bytes] = syslog_message,
                  **tcp_options: object) -> list[Sender]:
    """The profile's numbered load: ``tcp_senders`` TCP senders and one UDP sender."""
    senders: list[Sender] = [
        TcpSender(f"t{i}", port, rate=prof.tcp_rate / prof.tcp_senders, source=source,
                  encode=encode, **tcp_options)  # type: ignore[arg-type]
        for i in range(prof.tcp_senders)]
    if udp:
        senders.append(UdpSender("u0", port, rate=prof.udp_rate, source=source, encode=encode))
    for sender in senders:
        sender.start()
    return senders


def stop_senders(senders: Iterable[Sender]) -> None:
    for sender in senders:
        sender.halt.set()
    for sender in senders:
        sender.stop()


# --- What the relay holds and delivered --------------------------------------------------

class _Delivered:
    """What one FakeFirehose stored, decoded incrementally (its records only grow)."""

    def __init__(self) -> None:
        self.records = 0
        self.messages: list[str] = []
        self.numbers: set[tuple[str, int]] = set()

    def update(self, fake: FakeFirehose) -> _Delivered:
        stored = fake.data()
        if len(stored) < self.records:  # cannot happen; start over rather than mislead
            self.records, self.messages, self.numbers = 0, [], set()
        new = [event["message"] for _, _, event in
               events_of(decode_records(b"".join(stored[self.records:])))]
        self.records = len(stored)
        self.messages += new
        self.numbers.update(parsed for parsed in map(parse, new) if parsed)
        return self


_delivered: weakref.WeakKeyDictionary[FakeFirehose, _Delivered] = weakref.WeakKeyDictionary()


def delivered(fake: FakeFirehose) -> _Delivered:
    return _delivered.setdefault(fake, _Delivered()).update(fake)


def delivered_messages(fake: FakeFirehose) -> list[str]:
    """Every event message Firehose stored, in arrival order."""
    return list(delivered(fake).messages)


def spool_messages(spool: Path, directory: str = "") -> list[str]:
    """Event messages in the spool's record files (or in a subdirectory such as corrupt/)."""
    messages: list[str] = []
    base = spool / directory if directory else spool
    if not base.is_dir():
        return messages
    for path in sorted(base.iterdir()):
        if not path.is_file() or not path.name.startswith(("record-", "firehose_event-")):
            continue
        try:
            records = decode_records(path.read_bytes())
        except (OSError, ValueError, EOFError):
            continue  # vanished or cut short: whatever it held is accounted elsewhere
        messages += [event["message"] for _, _, event in events_of(records)]
    return messages


def ring_messages(spool: Path) -> list[str]:
    """Messages written to the ring file and not yet committed (the relay must be stopped)."""
    path = spool / RING_FILE
    if not path.exists():
        return []
    ring = Ring(str(path), 0)
    messages: list[str] = []
    try:
        for _ in range(100_000):
            entries = ring.read_batch(10_000)
            if not entries:
                break
            messages += [entry[4].decode(errors="replace") for entry in entries]
    finally:
        ring.close()
    return messages


def spool_files(spool: Path) -> list[Path]:
    return sorted(spool.glob("record-*.gz"))


def backlog_older_than(spool: Path, wall_time: float) -> int:
    """Record files written before ``wall_time`` (time.time()) still in the spool."""
    count = 0
    for path in spool_files(spool):
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime <= wall_time:
                count += 1
    return count


class Evidence:
    """Every numbered message ever seen read by the relay (ring, spool, delivered)."""

    def __init__(self) -> None:
        self.seen: dict[str, set[int]] = {}

    def add(self, messages: Iterable[str]) -> None:
        for message in messages:
            parsed = parse(message)
            if parsed:
                self.seen.setdefault(parsed[0], set()).add(parsed[1])

    def snapshot(self, spool: Path) -> None:
        """After a kill or stop, before the next start: the ring and the spool files."""
        self.add(ring_messages(spool))
        self.add(spool_messages(spool))


@dataclass
class Tally:
    sent: int = 0
    delivered: int = 0  # distinct sent messages Firehose stored
    duplicates: int = 0  # extra copies
    spooled: int = 0  # read, not delivered, still in the spool or ring
    lost: int = 0  # read (provably), neither delivered nor spooled
    unread: int = 0  # sent, never read (kernel buffers at a kill, refused)
    tcp_unread: int = 0
    udp_dropped: int = 0  # counted by the relay's metrics
    udp_missing: int = 0  # UDP datagrams not delivered below the highest read
    foreign: int = 0  # delivered messages that match no sent number
    lost_examples: list[str] = field(default_factory=list)
    per_sender: dict[str, dict[str, int]] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"sent {self.sent}, delivered {self.delivered}, duplicates {self.duplicates}, "
                f"spooled {self.spooled}, lost {self.lost} (e.g. {self.lost_examples[:5]}), "
                f"unread {self.unread} (TCP {self.tcp_unread}), UDP dropped (counted) "
                f"{self.udp_dropped}, UDP missing {self.udp_missing}, foreign {self.foreign}; "
                f"per sender {self.per_sender}")


def tally(senders: Iterable[Sender], delivered: Iterable[str], spooled: Iterable[str] = (),
          evidence: Evidence | None = None, udp_dropped: int = 0,
          udp_all_read: bool = False) -> Tally:
    """Counts per the module's rules. ``udp_all_read``: the relay was never killed while
    datagrams were in flight, so every datagram sent reached its socket and was read (the
    UDP senders paused before each stop); datagrams missing after the highest one delivered
    are then dropped too, and must be covered by the counted drops."""
    counts: Counter[tuple[str, int]] = Counter()
    for message in delivered:
        parsed = parse(message)
        if parsed:
            counts[parsed] += 1
    held = {parsed for parsed in map(parse, spooled) if parsed}
    result = Tally(udp_dropped=udp_dropped)
    result.duplicates = sum(count - 1 for count in counts.values() if count > 1)
    known: set[tuple[str, int]] = set()
    udp_missing = udp_unread = 0
    for sender in senders:
        name = sender.sender
        seen = set(evidence.seen.get(name, ())) if evidence else set()
        seen.update(n for s, n in counts if s == name)
        seen.update(n for s, n in held if s == name)
        ordered = sorted(seen)
        stats = Counter[str]()
        for start, end in sender.spans:
            if end <= start:
                continue
            stats["sent"] += end - start
            known.update((name, n) for n in range(start, end))
            index = bisect.bisect_left(ordered, end) - 1
            highest = ordered[index] if index >= 0 and ordered[index] >= start else start - 1
            stats["unread"] += end - 1 - highest
            for number in range(start, highest + 1):
                if (name, number) in counts:
                    stats["delivered"] += 1
                elif (name, number) in held:
                    stats["spooled"] += 1
                else:
                    stats["missing"] += 1
                    if len(result.lost_examples) < 20:
                        result.lost_examples.append(f"{name}-{number}")
        result.sent += stats["sent"]
        result.delivered += stats["delivered"]
        result.spooled += stats["spooled"]
        result.unread += stats["unread"]
        if sender.transport == "udp":
            udp_missing += stats["missing"]
            udp_unread += stats["unread"]
        else:
            result.lost += stats["missing"]
            result.tcp_unread += stats["unread"]
        result.per_sender[name] = dict(stats)
    if udp_all_read:
        udp_missing += udp_unread
    result.udp_missing = udp_missing
    result.lost += max(0, udp_missing - udp_dropped)
    result.foreign = sum(count for key, count in counts.items() if key not in known)
    return result


def first_delivery_order(delivered: Iterable[str]) -> dict[str, list[int]]:
    """Per sender, its numbers in the order Firehose first stored them."""
    order: dict[str, list[int]] = {}
    seen: set[tuple[str, int]] = set()
    for message in delivered:
        parsed = parse(message)
        if parsed and parsed not in seen:
            seen.add(parsed)
            order.setdefault(parsed[0], []).append(parsed[1])
    return order


def out_of_order(delivered: Iterable[str]) -> dict[str, int]:
    """Per sender, how many numbers arrived after a higher one (0 everywhere: oldest first)."""
    result = {}
    for sender, numbers in first_delivery_order(delivered).items():
        result[sender] = sum(1 for a, b in zip(numbers, numbers[1:]) if b < a)
    return result


# --- Processes and memory ----------------------------------------------------------------

def proc_kib(path: str, key: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def rss_kib(pid: int) -> int:
    return proc_kib(f"/proc/{pid}/status", "VmRSS:")


def pss_kib(pid: int) -> int:
    return proc_kib(f"/proc/{pid}/smaps_rollup", "Pss:")


def children(relay: Relay) -> dict[str, int]:
    """Relay.child_pids(), retried: a thread of the listener may end while it is read."""
    for _ in range(20):
        try:
            return relay.child_pids()
        except FileNotFoundError:
            time.sleep(0.01)
    return relay.child_pids()


def relay_pids(relay: Relay | None) -> list[int]:
    if relay is None or relay.process is None or relay.process.poll() is not None:
        return []
    try:
        return [relay.pid, *children(relay).values()]
    except OSError:
        return [relay.pid]


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of a scrape, 0 if absent (counters appear at their first increment)."""
    try:
        return sample(text, name, **labels)
    except AssertionError:
        return 0.0


def scrape(port: int) -> str:
    try:
        return fetch(f"http://127.0.0.1:{port}/metrics")[1]
    except OSError:
        return ""


def health(port: int) -> tuple[int, str]:
    try:
        return fetch(f"http://127.0.0.1:{port}/healthz")
    except OSError as error:
        return 0, str(error)


class Monitor(threading.Thread):
    """Samples the relay's memory (sum over its processes; the listener alone) and scrapes
    its metrics every ``interval`` seconds. ``relay`` may be swapped after a restart."""

    def __init__(self, metrics_port: int | None, interval: float = 0.5) -> None:
        super().__init__(name="monitor", daemon=True)
        self.metrics_port = metrics_port
        self.interval = interval
        self.relay: Relay | None = None
        self.halt = threading.Event()
        self.peak_rss = self.peak_pss = self.listener_peak_rss = 0  # KiB
        self.samples = 0
        self.scrapes: dict[int, str] = {}  # latest scrape per relay incarnation (listener pid)
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        with self._lock:
            relay = self.relay
            pids = relay_pids(relay)
            if not pids:
                return
            rss = [rss_kib(pid) for pid in pids]
            pss = sum(pss_kib(pid) for pid in pids)
            self.peak_rss = max(self.peak_rss, sum(rss))
            self.peak_pss = max(self.peak_pss, pss)
            self.listener_peak_rss = max(self.listener_peak_rss, rss[0])
            self.samples += 1
            if self.metrics_port is not None and relay is not None:
                text = scrape(self.metrics_port)
                if text and relay_pids(relay):
                    self.scrapes[relay.pid] = text

    def watch(self, relay: Relay | None) -> None:
        with self._lock:
            self.relay = relay

    def stop(self) -> None:
        self.halt.set()
        if self.is_alive():
            self.join(10)

    def counted_udp_drops(self) -> int:
        """ring_full and udp_kernel drops summed over the relay's incarnations."""
        return int(sum(metric(text, "kinesyslog_messages_dropped_total", reason="ring_full")
                       + metric(text, "kinesyslog_messages_dropped_total", reason="udp_kernel")
                       for text in self.scrapes.values()))


def logged_udp_drops(relay: Relay) -> int:
    """The ring_full count of the relay's last statistics line (logged at its shutdown)."""
    found = re.findall(r"(\d+) UDP dropped", relay.log)
    return int(found[-1]) if found else 0


# --- The relay ---------------------------------------------------------------------------

def chaos_args(spool: Path, port: int, *extra: str, metrics_port: int | None = None) -> list[str]:
    """tests/e2e's Firehose arguments, with the chaos suite's small, quick buffers."""
    args = args_for(spool, port, "--flush-interval", "0.5", "--flush-size", "65536", *extra)
    if metrics_port is not None:
        args += ["--prometheus-port", str(metrics_port)]
    return args


def new_relay(args: list[str], fake: FakeFirehose) -> Relay:
    """A relay in a process group of its own (setsid execs it: same pid), so that the whole
    group can be SIGKILLed without touching the test runner."""
    return Relay(args, env={"AWS_ENDPOINT_URL": fake.url},
                 command=["setsid", *kinesyslog_command()])


def start_watched(args: list[str], fake: FakeFirehose, relays: list[Relay],
                  monitor: Monitor) -> Relay:
    """Starts a relay, adds it to ``relays`` (killed at the end, see stopped_on_exit) and
    has ``monitor`` sample its processes."""
    relay = new_relay(args, fake).start()
    relays.append(relay)
    monitor.watch(relay)
    return relay


def kill_group(relay: Relay) -> None:
    """SIGKILL every process left in the relay's process group, and the relay itself."""
    if relay.process is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(relay.pid, signal.SIGKILL)
    relay.kill()


def live_members(group: int) -> list[int]:
    """The processes of a process group that have not exited. Exited ones may linger as
    zombies where PID 1 does not reap orphans (a container whose PID 1 is a shell)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            members.append(int(entry.name))
    return members


def wait_gone(relay: Relay, timeout: float) -> int:
    """Waits for the listener to exit and for its whole process group to be gone."""
    code = relay.wait(timeout)

    def group_gone() -> bool:
        try:
            os.killpg(relay.pid, 0)
        except ProcessLookupError:
            return True
        return not live_members(relay.pid)

    try:
        wait_for(group_gone, timeout, message="the relay's children to exit")
    except AssertionError:
        kill_group(relay)
        raise
    return code


@contextlib.contextmanager
def stopped_on_exit(relays: list[Relay]) -> Iterator[list[Relay]]:
    """Every relay started into ``relays`` is killed (by PID and group) when the block ends."""
    try:
        yield relays
    finally:
        for relay in relays:
            kill_group(relay)


def wait_delivered(fake: FakeFirehose, senders: Iterable[Sender], spool: Path,
                   timeout: float) -> bool:
    """Waits until Firehose holds every message the senders sent and the spool is empty."""
    wanted = {(s.sender, n) for s in senders for start, end in s.spans for n in range(start, end)}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not spool_files(spool) and wanted <= delivered(fake).numbers:
            return True
        time.sleep(0.25)
    return False


def await_recovery(relay: Relay, fake: FakeFirehose, spool: Path,
                   what: str) -> tuple[float, float]:
    """Call when Firehose has just come back: seconds until it accepted the first record,
    and until the spool held nothing written before that moment."""
    ended, ended_wall = time.monotonic(), time.time()
    wait_relay(relay, lambda: fake.first_accepted_after(ended) is not None, 60,
               message=f"the first record accepted after {what}")
    first = fake.first_accepted_after(ended)
    assert first is not None
    wait_relay(relay, lambda: backlog_older_than(spool, ended_wall) == 0, 120,
               message=f"the backlog of {what} to be uploaded")
    return first - ended, time.monotonic() - ended


@dataclass
class Ending:
    """What wind_down() found."""

    code: int  # the relay's exit status
    counts: Tally
    delivered_all: bool  # every TCP message sent reached Firehose and the spool is empty


def wind_down(relay: Relay, monitor: Monitor, fake: FakeFirehose, spool: Path,
              senders: list[Sender]) -> Ending:
    """Stops the senders, waits for delivery, stops the relay and counts every message."""
    stop_senders(senders)
    tcp = [s for s in senders if not isinstance(s, UdpSender)]
    delivered_all = wait_delivered(fake, tcp, spool, 120)
    monitor.sample()
    for sender in senders:
        if isinstance(sender, UdpSender):
            sender.close_span()
    code = relay.stop()
    monitor.stop()
    dropped = max(monitor.counted_udp_drops(), logged_udp_drops(relay))
    counts = tally(senders, delivered_messages(fake), spool_messages(spool) + ring_messages(spool),
                   udp_dropped=dropped, udp_all_read=True)
    return Ending(code, counts, delivered_all)


def ports(count: int) -> list[int]:
    """``count`` distinct ports, each free for TCP and UDP (free_ports)."""
    return [free_ports() for _ in range(count)]


def wait_relay(relay: Relay, predicate: Callable[[], bool], timeout: float, message: str,
               interval: float = 0.1) -> None:
    """wait_for() that fails at once, with the relay's log, if the relay exits meanwhile,
    and shows the log when it times out."""
    def ready() -> bool:
        if relay.process is not None and relay.process.poll() is not None:
            raise AssertionError(f"the relay exited ({relay.process.returncode}) while waiting "
                                 f"for {message}" + relay_log_tail(relay))
        return predicate()

    try:
        wait_for(ready, timeout, interval, message)
    except AssertionError as error:
        if "relay log" in str(error):
            raise
        raise AssertionError(f"{error}{relay_log_tail(relay)}") from None


def relay_log_tail(relay: Relay, characters: int = 4000) -> str:
    return f"\n--- relay log (last {characters} characters) ---\n{relay.log[-characters:]}"


def wait_settled(fake: FakeFirehose, spool: Path, timeout: float, quiet: float = 2.0) -> bool:
    """Waits until the spool is empty and Firehose stored nothing new for ``quiet`` seconds
    (after the senders stopped: what the relay read is through)."""
    deadline = time.monotonic() + timeout
    count, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now_count = len(fake.records)
        if now_count != count or spool_files(spool):
            count, since = now_count, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return True
        time.sleep(0.1)
    return False


# --- Results -----------------------------------------------------------------------------

@dataclass
class Result:
    scenario: str
    load: str
    duration: float
    sent: int
    delivered: int
    duplicates: int
    spooled: int
    lost: int
    udp_dropped: int = 0
    unread: int = 0
    peak_rss_mib: float = 0.0
    peak_pss_mib: float = 0.0
    recovery: str = ""
    notes: str = ""
    profile: str = ""
    test: str = ""  # the pytest node id
    outcome: str = ""  # passed / failed, once pytest reported it

    @classmethod
    def of(cls, scenario: str, load: str, started: float, counts: Tally,
           monitor: Monitor | None = None, recovery: str = "", notes: str = "") -> Result:
        return cls(scenario=scenario, load=load, duration=round(time.monotonic() - started, 1),
                   sent=counts.sent, delivered=counts.delivered, duplicates=counts.duplicates,
                   spooled=counts.spooled, lost=counts.lost, udp_dropped=counts.udp_dropped,
                   unread=counts.unread,
                   peak_rss_mib=round(monitor.peak_rss / 1024, 1) if monitor else 0.0,
                   peak_pss_mib=round(monitor.peak_pss / 1024, 1) if monitor else 0.0,
                   recovery=recovery, notes=notes, profile=profile().name,
                   test=os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0])


RESULTS: list[Result] = []
COLUMNS = ("scenario", "result", "load", "duration s", "sent", "delivered", "duplicates",
           "spooled", "lost", "UDP dropped", "unread", "peak RSS MiB", "peak PSS MiB",
           "time to recover", "notes")


def row_cells(result: Result) -> list[str]:
    return [result.scenario, result.outcome or "-", result.load, f"{result.duration:g}",
            str(result.sent),
            str(result.delivered), str(result.duplicates), str(result.spooled),
            str(result.lost), str(result.udp_dropped), str(result.unread),
            f"{result.peak_rss_mib:g}", f"{result.peak_pss_mib:g}", result.recovery or "-",
            result.notes or "-"]


def record(result: Result) -> None:
    """Prints the scenario's row and keeps it for the summary table (and the runner)."""
    RESULTS.append(result)
    print("\nCHAOS RESULT | " + " | ".join(row_cells(result)), flush=True)
    _append(asdict(result))


def record_failure(test: str, scenario: str, error: str) -> None:
    """The row of a scenario that failed before it could count (the relay exited, a wait
    timed out): every scenario prints one row."""
    first_line = error.strip().splitlines()[0] if error.strip() else "failed"
    result = Result(scenario=scenario, load="-", duration=0.0, sent=0, delivered=0,
                    duplicates=0, spooled=0, lost=0, notes=f"no count: {first_line[:300]}",
                    profile=profile().name, test=test, outcome="failed")
    record(result)
    _append({"test": test, "outcome": "failed"})


def record_outcome(test: str, outcome: str) -> None:
    """pytest's verdict on the test that recorded rows (the rows come before the asserts)."""
    for result in RESULTS:
        if result.test == test and result.outcome != "failed":
            result.outcome = outcome
    _append({"test": test, "outcome": outcome})


def _append(line: dict[str, object]) -> None:
    path = os.environ.get(RESULTS_ENV)
    if path:
        with open(path, "a") as file:
            file.write(json.dumps(line) + "\n")


def markdown_table(results: Iterable[Result]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for result in results:
        cells = [cell.replace("|", "/") for cell in row_cells(result)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_results(path: Path) -> list[Result]:
    """The rows a run appended to ``path``, with their tests' outcomes."""
    results: list[Result] = []
    if not path.exists():
        return results
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if "scenario" in entry:
            results.append(Result(**entry))
        else:
            for result in results:
                if result.test == entry["test"] and result.outcome != "failed":
                    result.outcome = entry["outcome"]
    return results
