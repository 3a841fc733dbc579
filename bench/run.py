#!/usr/bin/env python3
"""Throughput and memory benchmark of the relay, end to end: socket → gzip records on disk.

Each scenario starts a fresh relay (fresh spool and output directories), sends N numbered
RFC 5424 (or GELF 1.1) messages, waits until no record has appeared for a while, stops the
relay with SIGTERM and only then decodes every record, so loss and duplicates are counted
exactly.
See bench/README.md for the columns. Run by hand, after `make build`, from the repository:
.venv/bin/python bench/run.py --help
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kinesyslog.constants import (  # noqa: E402
    FIREHOSE_MAX_RECORD_BYTES,
    GELF_CHUNK_MAGIC,
    GELF_MAX_CHUNKS,
    SPOOL_LEGACY_PREFIX,
    SPOOL_RECORD_PREFIX,
)

try:
    from isal import isal_zlib as inflate_lib
except ImportError:  # the standard zlib decodes the same, only slower
    inflate_lib = zlib  # type: ignore[assignment]

DEFAULT_SCENARIOS = ("tcp1-lf", "tcp1-octet", "tcp8-lf", "tcp8-octet", "udp-50000")
READY_LINE = "kinesyslog ready"
SAMPLE_INTERVAL = 0.2  # seconds between memory/CPU samples
POLL_INTERVAL = 0.05  # seconds between looks at a log file, a directory or a process
SEND_CHUNK = 1024 * 1024  # bytes per sendall() on TCP
SEND_TIMEOUT = 120.0  # a TCP send that makes no progress for this long fails the scenario
UDP_BURSTS_PER_SECOND = 1000
MAX_DESCENDANTS = 64
CHILDREN_TIMEOUT = 10.0  # how long to wait for the worker and uploader to show up
DELIVERED_FRACTION = 0.95  # t95: when this fraction of the messages was on disk
LEGACY_STREAM = "kinesyslog-bench"
LOG_TAIL_LINES = 20
KIB = 1024  # /proc reports kB meaning KiB
MB = 1_000_000

# RFC 5424 section 6: SD-ID "name@<private enterprise number>"; 32473 is reserved for
# documentation (RFC 5612). The sequence number in it is how loss is counted.
SD_ID = "bench@32473"
SEQ_RE = re.compile(r'\[bench@32473 seq="(\d+)"\]')
# GELF messages carry it at the start of short_message, zero-padded so all have one length.
GELF_SEQ_RE = re.compile(r'"short_message":"seq=(\d+) ')
GELF_SEQ_DIGITS = 7
HOSTS = [f"{kind}-{i:02d}.example.com" for kind in ("web", "db", "edge") for i in range(4)]
APPS = [("nginx", "access"), ("sshd", "auth"), ("api", "request"), ("postgres", "query"),
        ("kernel", "-"), ("cron", "job")]
PRIS = [134, 38, 86, 13, 30, 165]
PATHS = ["/", "/api/v1/orders", "/api/v1/users/me", "/static/app.js", "/login", "/healthz",
         "/api/v2/search?q=widgets&page=2", "/favicon.ico"]
METHODS = ["GET", "GET", "GET", "POST", "PUT", "DELETE"]
STATUSES = [200, 200, 200, 200, 304, 404, 500, 201]
FILLER = (
    "user_agent=\"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0 Safari/537.36\" referer=https://www.example.com/catalog/item trace_id="
    "4bf92f3577b34da6a3ce929d0e0e4736 span=00f067aa0ba902b7 upstream=10.20.30.40:8080 "
    "cache=MISS tls=TLSv1.3 cipher=TLS_AES_128_GCM_SHA256 bytes_in=734 region=eu-west-1 "
    "note=\"connection reused; keepalive 75s; gzip on; request buffered to disk\" "
)
GELF_FILLER = FILLER.replace('"', "'")  # nothing to escape in JSON: lengths stay exact


# --- scenarios and payloads ----------------------------------------------------------------

@dataclass(frozen=True)
class Scenario:
    name: str
    transport: str  # "tcp" or "udp"
    connections: int
    framing: str  # "lf", "octet" (RFC 6587) or "datagram"
    rate: int  # messages per second (UDP only)
    protocol: str = "syslog"  # or "gelf": the relay gets --gelf
    chunks: int = 1  # GELF chunks per message; 1 sends it whole


def parse_scenario(name: str) -> Scenario:
    tcp = re.fullmatch(r"tcp([1-9]\d{0,2})-(lf|octet)", name)
    if tcp:
        return Scenario(name, "tcp", int(tcp[1]), tcp[2], 0)
    udp = re.fullmatch(r"udp-([1-9]\d*)", name)
    if udp:
        return Scenario(name, "udp", 1, "datagram", int(udp[1]))
    gelf = re.fullmatch(r"gelf([1-9]\d{0,2})?-udp-([1-9]\d*)", name)
    if gelf and int(gelf[1] or 1) <= GELF_MAX_CHUNKS:
        return Scenario(name, "udp", 1, "datagram", int(gelf[2]), "gelf", int(gelf[1] or 1))
    raise argparse.ArgumentTypeError(
        f"unknown scenario {name!r}: use tcp<N>-lf, tcp<N>-octet, udp-<rate>, gelf-udp-<rate> "
        f"or gelf<K>-udp-<rate> (K <= {GELF_MAX_CHUNKS} chunks per message)")


def make_messages(count: int, size: int, base_second: int) -> list[bytes]:
    """count distinct ASCII RFC 5424 messages of exactly size bytes; message i carries the
    sequence number i and the timestamp base_second + i // 1000 s + (i % 1000) ms."""
    filler = FILLER * (size // len(FILLER) + 2)
    messages = []
    stamp_second, stamp = -1, ""
    for seq in range(count):
        second = base_second + seq // 1000
        if second != stamp_second:
            stamp_second = second
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        app, msgid = APPS[seq % len(APPS)]
        head = (f"<{PRIS[seq % len(PRIS)]}>1 {stamp}.{seq % 1000:03d}Z {HOSTS[seq % len(HOSTS)]}"
                f" {app} {1000 + seq % 977} {msgid} [{SD_ID} seq=\"{seq}\"] ")
        if len(head) > size:
            raise ValueError(f"--size {size} is too small: message {seq} needs {len(head)} bytes")
        text = (f"{head}10.{seq % 251}.{seq % 13}.{seq % 199} {METHODS[seq % len(METHODS)]} "
                f"{PATHS[seq % len(PATHS)]} {STATUSES[seq % len(STATUSES)]} {seq % 65_521} "
                f"rt={seq % 997 / 1000:.3f} ")
        if len(text) < size:
            start = seq * 7919 % len(FILLER)
            text += filler[start:start + size - len(text)]
        messages.append(text[:size].encode("ascii"))
    return messages


def make_gelf_messages(count: int, size: int, base_second: int) -> list[bytes]:
    """count distinct GELF 1.1 JSON documents of exactly size ASCII bytes, with the sequence
    numbers and timestamps (in "timestamp", seconds with 3 decimals) of make_messages."""
    filler = GELF_FILLER * (size // len(GELF_FILLER) + 2)
    messages = []
    for seq in range(count):
        app, _ = APPS[seq % len(APPS)]
        second = base_second + seq // 1000
        head = (f'{{"version":"1.1","host":"{HOSTS[seq % len(HOSTS)]}",'
                f'"level":{PRIS[seq % len(PRIS)] % 8},"timestamp":{second}.{seq % 1000:03d},'
                f'"_app":"{app}","_pid":{1000 + seq % 977},'
                f'"short_message":"seq={seq:0{GELF_SEQ_DIGITS}d} ')
        tail = '"}'
        if len(head) + len(tail) > size:
            raise ValueError(f"--size {size} is too small: GELF message {seq} needs "
                             f"{len(head) + len(tail)} bytes")
        text = (f"{head}10.{seq % 251}.{seq % 13}.{seq % 199} {METHODS[seq % len(METHODS)]} "
                f"{PATHS[seq % len(PATHS)]} {STATUSES[seq % len(STATUSES)]} {seq % 65_521} "
                f"rt={seq % 997 / 1000:.3f} ")
        start = seq * 7919 % len(GELF_FILLER)
        text = (text + filler[start:start + size])[:size - len(tail)] + tail
        messages.append(text.encode("ascii"))
    return messages


def gelf_chunks(messages: list[bytes], count: int) -> list[bytes]:
    """Each message split into count GELF chunks, in order, one datagram each:
    magic 0x1e 0x0f, 8-byte message id, sequence number, sequence count, then the part."""
    salt = random.getrandbits(32) << 32  # ids differ between runs, as real senders' do
    datagrams = []
    for seq, message in enumerate(messages):
        if len(message) < count:
            raise ValueError(f"a {len(message)}-byte message cannot make {count} chunks")
        header = GELF_CHUNK_MAGIC + (salt | seq).to_bytes(8, "big")
        length = len(message)
        datagrams += (header + bytes((k, count)) + message[length * k // count:
                                                           length * (k + 1) // count]
                      for k in range(count))
    return datagrams


def expected_timestamp_ms(seq: int, base_second: int) -> int:
    return (base_second + seq // 1000) * 1000 + seq % 1000


def frame(messages: list[bytes], framing: str) -> bytes:
    if framing == "lf":
        return b"\n".join(messages) + b"\n"
    # RFC 6587 3.4.1: octet-counting = MSG-LEN SP SYSLOG-MSG
    prefixes: dict[int, bytes] = {}
    parts: list[bytes] = []
    for message in messages:
        length = len(message)
        prefix = prefixes.get(length) or prefixes.setdefault(length, b"%d " % length)
        parts += (prefix, message)
    return b"".join(parts)


def split_evenly(count: int, parts: int) -> list[range]:
    """parts contiguous ranges covering 0..count."""
    step = math.ceil(count / parts)
    return [range(i, min(i + step, count)) for i in range(0, count, step)]


# --- /proc ----------------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


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


def role_of(pid: int, root: int) -> str:
    if pid == root:
        return "listener"
    cmdline = (read_proc(f"/proc/{pid}/cmdline") or "").replace("\0", " ")
    for role in ("worker", "uploader"):
        if f"kinesyslog: {role}" in cmdline:
            return role
    return "child"


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
    """Samples RSS and PSS (summed over the relay's processes) and each one's CPU time."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.procs: dict[int, ProcStats] = {}
        self.peak_rss_kb = 0
        self.peak_pss_kb = 0
        self.samples = 0
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
        rss_total = pss_total = 0
        for pid in [self.root, *descendants(self.root)]:
            status, fields = read_proc(f"/proc/{pid}/status"), stat_fields(pid)
            if status is None or fields is None:
                continue
            proc = self.procs.get(pid)
            if proc is None or proc.start_ticks != fields[19]:
                proc = self.procs[pid] = ProcStats(pid, role_of(pid, self.root), fields[19])
            elif proc.role == "child":  # seen between fork and setting its process title
                proc.role = role_of(pid, self.root)
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

    def still_ours(self, proc: ProcStats) -> bool:
        fields = stat_fields(proc.pid)
        return fields is not None and fields[19] == proc.start_ticks and fields[0] != "Z"


# --- a Firehose stand-in for --legacy runs ---------------------------------------------------

class StubFirehose(BaseHTTPRequestHandler):
    """Says the stream is ACTIVE and fails every record, so records stay in the spool, where
    the harness counts them; answers sts:GetCallerIdentity with account 000000000000."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        target = self.headers.get("X-Amz-Target", "")
        if target.endswith(".DescribeDeliveryStream"):
            self._json({"DeliveryStreamDescription": {
                "DeliveryStreamName": LEGACY_STREAM, "DeliveryStreamStatus": "ACTIVE",
                "DeliveryStreamARN": f"arn:aws:firehose:us-east-1:000000000000:"
                                     f"deliverystream/{LEGACY_STREAM}",
                "DeliveryStreamType": "DirectPut", "VersionId": "1", "Destinations": [],
                "HasMoreDestinations": False}})
        elif target.endswith(".PutRecordBatch"):
            count = len(json.loads(body)["Records"])
            failure = {"ErrorCode": "ServiceUnavailableException",
                       "ErrorMessage": "benchmark stub: records stay spooled"}
            self._json({"FailedPutCount": count, "Encrypted": False,
                        "RequestResponses": [failure] * count})
        elif target.endswith("GetCallerIdentity"):
            self._json({"Account": "000000000000", "UserId": "BENCH",
                        "Arn": "arn:aws:iam::000000000000:user/bench"})
        elif b"Action=GetCallerIdentity" in body:
            self._reply(200, "text/xml", (
                b'<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
                b"<GetCallerIdentityResult><Arn>arn:aws:iam::000000000000:user/bench</Arn>"
                b"<UserId>BENCH</UserId><Account>000000000000</Account></GetCallerIdentityResult>"
                b"<ResponseMetadata><RequestId>bench</RequestId></ResponseMetadata>"
                b"</GetCallerIdentityResponse>"))
        else:
            self._reply(400, "application/x-amz-json-1.1",
                        b'{"__type": "UnknownOperationException", "message": "benchmark stub"}')

    def _json(self, document: dict[str, Any]) -> None:
        self._reply(200, "application/x-amz-json-1.1", json.dumps(document).encode())

    def _reply(self, code: int, content_type: str, data: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", "bench")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


# --- the relay under test ---------------------------------------------------------------------

def free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RelayError(Exception):
    pass


class Relay:
    """One relay process tree, started fresh for one scenario and always stopped by pid."""

    def __init__(self, args: argparse.Namespace, workdir: Path, stub_url: str | None,
                 gelf: bool = False) -> None:
        self.args = args
        self.gelf = gelf
        self.spool = workdir / "spool"
        self.out = workdir / "out"
        self.spool.mkdir()
        self.out.mkdir()
        self.log_path = workdir / "relay.log"
        self.tcp_port = free_port(socket.SOCK_STREAM)
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.stub_url = stub_url
        self.proc: subprocess.Popen[bytes] | None = None
        self.sampler: Sampler | None = None

    @property
    def collect_dir(self) -> Path:
        return self.spool if self.args.legacy else self.out

    def is_record(self, name: str) -> bool:
        if self.args.legacy:
            return name.startswith((SPOOL_LEGACY_PREFIX, SPOOL_RECORD_PREFIX))
        return not name.startswith(".")

    def command(self) -> list[str]:
        relay = shlex.split(self.args.relay_cmd) if self.args.relay_cmd else [
            sys.executable, "-m", "kinesyslog"]
        cmd = [*relay, "listen", "--spool-dir", str(self.spool),
               "--address", "127.0.0.1", "--tcp-port", str(self.tcp_port),
               "--udp-port", str(self.udp_port)]
        if self.gelf:  # every listener then speaks GELF
            cmd.append("--gelf")
        if self.args.legacy:  # only options that kinesyslog 2.x knows
            cmd += ["--stream", LEGACY_STREAM, "--tls-port", "0"]
        else:
            cmd += ["--output-dir", str(self.out), "--flush-interval",
                    str(self.args.flush_interval)]
            if self.args.flush_size:
                cmd += ["--flush-size", str(self.args.flush_size)]
        return cmd + list(self.args.relay_arg)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if not self.args.relay_cmd:  # this checkout, with its extensions built in place
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT),
                                                              env.get("PYTHONPATH")]))
        if self.stub_url:
            env.update(AWS_ENDPOINT_URL=self.stub_url, AWS_ACCESS_KEY_ID="bench",
                       AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                       AWS_EC2_METADATA_DISABLED="true")
            env.pop("AWS_PROFILE", None)
            env.pop("AWS_SESSION_TOKEN", None)
        return env

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            # Its own session: a Ctrl-C in the terminal reaches the harness only, which then
            # stops the relay with SIGTERM like a service manager would.
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.log_path.parent,
                                         env=self.environment(), start_new_session=True)
        # Sampling from the start also learns the children's pids, for stop().
        self.sampler = Sampler(self.proc.pid)
        self._wait_ready()
        self._wait_children()
        self.sampler.start()

    def _wait_ready(self) -> None:
        assert self.proc is not None and self.sampler is not None
        deadline = time.monotonic() + self.args.ready_timeout
        while time.monotonic() < deadline:
            self.sampler.sample()
            if self.proc.poll() is not None:
                raise RelayError(f"the relay exited with {self.proc.returncode} at start-up:\n"
                                 + self.log_tail())
            if self._ready():
                return
            time.sleep(POLL_INTERVAL)
        raise RelayError(f"the relay was not ready within {self.args.ready_timeout} s:\n"
                         + self.log_tail())

    def _ready(self) -> bool:
        if not self.args.legacy:
            return READY_LINE in self.log_path.read_text(errors="replace")
        # kinesyslog 2.x prints no ready line: it is ready when its TCP port accepts.
        try:
            socket.create_connection(("127.0.0.1", self.tcp_port), timeout=1).close()
        except OSError:
            return False
        return True

    def _wait_children(self) -> None:
        """Our relay forks a worker and an uploader; wait until both have their titles."""
        assert self.sampler is not None
        deadline = time.monotonic() + CHILDREN_TIMEOUT
        while not self.args.legacy and time.monotonic() < deadline:
            self.sampler.sample()
            roles = {proc.role for proc in self.sampler.procs.values()}
            if {"worker", "uploader"} <= roles:
                return
            time.sleep(POLL_INTERVAL)
        if not self.args.legacy:
            print(f"warning: no worker/uploader process titles after {CHILDREN_TIMEOUT} s; "
                  "measuring every child process", file=sys.stderr)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def final_sample(self) -> None:
        """The last CPU and VmHWM readings, taken while the processes still exist."""
        if self.sampler:
            self.sampler.stop()
            self.sampler.sample()

    def stop(self) -> int | None:
        """SIGTERM, a bounded wait, then SIGKILL by pid for whatever is left."""
        if self.proc is None:
            return None
        if self.sampler:
            self.sampler.stop()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.args.stop_timeout)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):  # a second Ctrl-C kills
                print("warning: the relay did not stop after SIGTERM; killing it",
                      file=sys.stderr)
                self.proc.kill()
                self.proc.wait(timeout=10)
        leftovers = [p for p in (self.sampler.procs.values() if self.sampler else ())
                     if p.pid != self.proc.pid]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(map(self._ours, leftovers)):
            time.sleep(POLL_INTERVAL)
        for proc in filter(self._ours, leftovers):
            print(f"warning: killing left-over {proc.role} process {proc.pid}", file=sys.stderr)
            os.kill(proc.pid, signal.SIGKILL)
        return self.proc.returncode

    def _ours(self, proc: ProcStats) -> bool:
        return self.sampler is not None and self.sampler.still_ours(proc)

    def log_tail(self) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-LOG_TAIL_LINES:])


# --- sending ----------------------------------------------------------------------------------

@dataclass
class SendResult:
    started: float  # wall clock (file mtimes are wall clock too)
    seconds: float
    sent: int
    errors: list[str] = field(default_factory=list)


def send_tcp(port: int, payloads: list[bytes], counts: list[int]) -> SendResult:
    """Sends each payload over its own connection, all at once, in large sendall() chunks."""
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=SEND_TIMEOUT)
               for _ in payloads]
    gate = threading.Barrier(len(payloads) + 1, timeout=SEND_TIMEOUT)
    errors: list[str] = []
    failed = [False] * len(payloads)

    def send(index: int) -> None:
        sock, view = sockets[index], memoryview(payloads[index])
        try:
            gate.wait()
            for offset in range(0, len(view), SEND_CHUNK):
                sock.sendall(view[offset:offset + SEND_CHUNK])
            sock.shutdown(socket.SHUT_WR)
        except (OSError, threading.BrokenBarrierError) as error:
            failed[index] = True
            errors.append(f"connection {index}: {error!r}")
        finally:
            sock.close()

    threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(len(payloads))]
    for thread in threads:
        thread.start()
    started, clock = time.time(), time.monotonic()
    gate.wait()
    for thread in threads:
        thread.join(timeout=SEND_TIMEOUT * 2)
        if thread.is_alive():
            errors.append("a sender thread did not finish")
    seconds = time.monotonic() - clock
    sent = sum(count for count, bad in zip(counts, failed) if not bad)
    return SendResult(started, seconds, sent, errors)


def send_udp(port: int, datagrams: list[bytes], rate: int, per_message: int = 1) -> SendResult:
    """Each message's per_message consecutive datagrams (1, or its GELF chunks) at rate
    messages per second, paced in small bursts. Counts the messages whose every datagram
    was sent."""
    burst = max(1, rate // UDP_BURSTS_PER_SECOND) * per_message
    datagram_rate = rate * per_message
    errors: dict[str, int] = {}
    failed: set[int] = set()  # messages with a datagram that was not sent
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", port))
        send = sock.send
        started, clock = time.time(), time.monotonic()
        for first in range(0, len(datagrams), burst):
            delay = clock + first / datagram_rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for index in range(first, min(first + burst, len(datagrams))):
                try:
                    send(datagrams[index])
                except OSError as error:  # ECONNREFUSED, ENOBUFS
                    errors[repr(error)] = errors.get(repr(error), 0) + 1
                    failed.add(index // per_message)
        seconds = time.monotonic() - clock
    sent = len(datagrams) // per_message - len(failed)
    return SendResult(started, seconds, sent, [f"{n} x {e}" for e, n in errors.items()])


# --- waiting and decoding ---------------------------------------------------------------------

def wait_quiet(relay: Relay, quiet: float, deadline: float) -> tuple[int, bool]:
    """Watches the record directory, without reading any record, until none appeared for
    quiet seconds. Returns how many it saw and whether it went quiet before the deadline."""
    seen: set[str] = set()
    last_change = time.monotonic()
    while time.monotonic() < deadline:
        with os.scandir(relay.collect_dir) as entries:
            for entry in entries:
                if entry.name not in seen and relay.is_record(entry.name) and entry.is_file():
                    seen.add(entry.name)
                    last_change = time.monotonic()
        if time.monotonic() - last_change >= quiet:
            return len(seen), True
        if not relay.alive():
            return len(seen), False
        time.sleep(POLL_INTERVAL)
    return len(seen), False


def gzip_members(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(compressed size, content) of each concatenated gzip member (RFC 1952 2.2)."""
    while data:
        inflater = inflate_lib.decompressobj(16 + zlib.MAX_WBITS)
        content = inflater.decompress(data) + inflater.flush()
        if not inflater.eof:
            raise ValueError("truncated gzip member")
        yield len(data) - len(inflater.unused_data), content
        data = inflater.unused_data


@dataclass
class Tally:
    events: int = 0
    distinct: int = 0
    duplicates: int = 0
    foreign: int = 0  # events without a sequence number of this run
    corrupt: int = 0  # right sequence number, different text
    bad_timestamps: int = 0
    misordered: int = 0  # later than a higher number of the same connection, in one record
    records: int = 0
    record_bytes: int = 0
    max_record_bytes: int = 0
    oversize_records: int = 0
    wrong_group: int = 0  # records whose logGroup is not .../<syslog|gelf>/<port>
    bad_files: list[str] = field(default_factory=list)
    newest_mtime: float = 0.0
    t95_mtime: float | None = None


def decode(relay: Relay, scenario: Scenario, messages: list[bytes], base_second: int) -> Tally:
    tally = Tally()
    connections = scenario.connections
    seq_re = GELF_SEQ_RE if scenario.protocol == "gelf" else SEQ_RE
    port = relay.tcp_port if scenario.transport == "tcp" else relay.udp_port
    group_suffix = f"/{scenario.protocol}/{port}"
    count = len(messages)
    per_connection = math.ceil(count / connections)
    seen = bytearray(count)
    delivered_at: list[tuple[float, int]] = []  # (mtime, new distinct events) per file
    for path in sorted(relay.collect_dir.iterdir()):
        if not (relay.is_record(path.name) and path.is_file()):
            continue
        data, mtime = path.read_bytes(), path.stat().st_mtime
        before = tally.distinct
        try:
            for size, member in gzip_members(data):
                tally.records += 1
                tally.record_bytes += size
                tally.max_record_bytes = max(tally.max_record_bytes, size)
                tally.oversize_records += size > FIREHOSE_MAX_RECORD_BYTES
                last: dict[int, int] = {}
                document = json.loads(member)
                # kinesyslog 2.x's group names are not part of what --legacy checks
                tally.wrong_group += not (relay.args.legacy
                                          or document["logGroup"].endswith(group_suffix))
                for event in document["logEvents"]:
                    tally.events += 1
                    message = event["message"]
                    match = seq_re.search(message)
                    seq = int(match[1]) if match else -1
                    if not 0 <= seq < count:
                        tally.foreign += 1
                        continue
                    if seen[seq]:
                        tally.duplicates += 1
                    else:
                        seen[seq] = 1
                        tally.distinct += 1
                    tally.corrupt += message.encode() != messages[seq]
                    tally.bad_timestamps += event["timestamp"] != expected_timestamp_ms(
                        seq, base_second)
                    conn = seq // per_connection
                    tally.misordered += seq < last.get(conn, -1)
                    last[conn] = seq
        except (ValueError, KeyError, TypeError, zlib.error) as error:
            tally.bad_files.append(f"{path.name}: {error!r}")
        tally.newest_mtime = max(tally.newest_mtime, mtime)
        delivered_at.append((mtime, tally.distinct - before))
    total = 0
    for mtime, new in sorted(delivered_at):
        total += new
        if total >= DELIVERED_FRACTION * count:
            tally.t95_mtime = mtime
            break
    return tally


# --- one scenario -------------------------------------------------------------------------------

def run_scenario(args: argparse.Namespace, scenario: Scenario, messages: list[bytes],
                 base_second: int, stub_url: str | None) -> dict[str, Any]:
    count = len(messages)
    result: dict[str, Any] = {"scenario": scenario.name, "transport": scenario.transport,
                              "protocol": scenario.protocol, "messages": count,
                              "size": args.size}
    parts = split_evenly(count, scenario.connections)
    payloads = []
    if scenario.transport == "tcp":
        payloads = [frame(messages[part.start:part.stop], scenario.framing) for part in parts]
        result["payload_bytes"] = sum(map(len, payloads))
    datagrams = messages
    if scenario.chunks > 1:
        datagrams = gelf_chunks(messages, scenario.chunks)
        result.update(chunks_per_message=scenario.chunks, datagrams=len(datagrams))
    workdir = Path(tempfile.mkdtemp(prefix=f"kinesyslog-bench-{scenario.name}-",
                                    dir=args.tmp_dir))
    relay = Relay(args, workdir, stub_url, gelf=scenario.protocol == "gelf")
    result.update(relay_command=relay.command(), workdir=str(workdir))
    try:
        try:
            relay.start()
            deadline = time.monotonic() + args.timeout
            udp_errors_before = udp_rcvbuf_errors()
            if scenario.transport == "tcp":
                sent = send_tcp(relay.tcp_port, payloads, [len(part) for part in parts])
            else:
                sent = send_udp(relay.udp_port, datagrams, scenario.rate, scenario.chunks)
            result["files_seen"], result["quiet"] = wait_quiet(relay, args.quiet, deadline)
            relay.final_sample()
        finally:
            result["exit_code"] = relay.stop()
    except (RelayError, OSError, threading.BrokenBarrierError) as error:
        result["error"] = f"{type(error).__name__}: {error} (relay log: {relay.log_path})"
        return result
    except KeyboardInterrupt:  # the relay is stopped; what it left is of no use
        if not args.keep:
            remove_tree(workdir)
        raise
    result.update(
        sent=sent.sent, send_errors=sent.errors, send_seconds=round(sent.seconds, 3),
        send_rate=round(sent.sent / sent.seconds) if sent.seconds else None,
        udp_rcvbuf_errors=udp_rcvbuf_errors() - udp_errors_before,
    )
    if relay.sampler:
        add_process_stats(result, relay.sampler)
    tally = decode(relay, scenario, messages, base_second)
    result.update(records_summary(tally, count, args.size, sent.started))
    if not args.keep and not problems(result):
        remove_tree(workdir)
    return result


def add_process_stats(result: dict[str, Any], sampler: Sampler) -> None:
    procs = list(sampler.procs.values())
    cpu_by_role: dict[str, float] = {}
    for proc in procs:
        cpu_by_role[proc.role] = round(cpu_by_role.get(proc.role, 0.0) + proc.cpu_seconds, 2)
    result.update(
        cpu_seconds=round(sum(p.cpu_seconds for p in procs), 2),
        cpu_by_role=cpu_by_role,
        peak_rss_mb=round(sampler.peak_rss_kb * KIB / MB, 1),
        peak_pss_mb=round(sampler.peak_pss_kb * KIB / MB, 1),
        hwm_mb=round(sum(p.hwm_kb for p in procs) * KIB / MB, 1),
        samples=sampler.samples,
        processes=[asdict(p) for p in procs],
    )


def records_summary(tally: Tally, count: int, size: int, started: float) -> dict[str, Any]:
    elapsed = tally.newest_mtime - started if tally.distinct else None
    return {
        "delivered": tally.distinct,
        "lost": count - tally.distinct,
        "duplicates": tally.duplicates,
        "foreign": tally.foreign,
        "corrupt": tally.corrupt,
        "bad_timestamps": tally.bad_timestamps,
        "misordered": tally.misordered,
        "events": tally.events,
        "records": tally.records,
        "record_bytes": tally.record_bytes,
        "max_record_bytes": tally.max_record_bytes,
        "oversize_records": tally.oversize_records,
        "wrong_group": tally.wrong_group,
        "bad_files": tally.bad_files,
        "elapsed_seconds": round(elapsed, 3) if elapsed else None,
        "t95_seconds": round(tally.t95_mtime - started, 3) if tally.t95_mtime else None,
        "msgs_per_sec": round(tally.distinct / elapsed) if elapsed else None,
        "mb_per_sec": round(tally.distinct * size / MB / elapsed, 2) if elapsed else None,
    }


def remove_tree(path: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames:
            os.unlink(os.path.join(dirpath, name))
        for name in dirnames:
            os.rmdir(os.path.join(dirpath, name))
    os.rmdir(path)


# --- output -------------------------------------------------------------------------------------

def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


COLUMNS: list[tuple[str, int, Callable[[dict[str, Any]], str]]] = [
    ("scenario", 15, lambda r: r["scenario"]),
    ("sent", 9, lambda r: _fmt(r.get("sent"))),
    ("lost", 7, lambda r: _fmt(r.get("lost"))),
    ("dup", 5, lambda r: _fmt(r.get("duplicates"))),
    ("elapsed_s", 9, lambda r: _fmt(r.get("elapsed_seconds"), 2)),
    ("t95_s", 7, lambda r: _fmt(r.get("t95_seconds"), 2)),
    ("msgs/s", 9, lambda r: _fmt(r.get("msgs_per_sec"))),
    ("MB/s", 7, lambda r: _fmt(r.get("mb_per_sec"), 1)),
    ("send/s", 9, lambda r: _fmt(r.get("send_rate"))),
    ("cpu_s", 6, lambda r: _fmt(r.get("cpu_seconds"), 1)),
    ("cpu L/W/U", 14, lambda r: cpu_split(r.get("cpu_by_role", {}))),
    ("rss_MB", 7, lambda r: _fmt(r.get("peak_rss_mb"), 0)),
    ("pss_MB", 7, lambda r: _fmt(r.get("peak_pss_mb"), 0)),
    ("hwm_MB", 7, lambda r: _fmt(r.get("hwm_mb"), 0)),
    ("records", 7, lambda r: _fmt(r.get("records"))),
    ("exit", 4, lambda r: _fmt(r.get("exit_code"))),
]


def cpu_split(by_role: dict[str, float]) -> str:
    """listener/worker/uploader CPU seconds, then +other children (kinesyslog 2.x's)."""
    text = "/".join(_fmt(by_role.get(role), 1) for role in ("listener", "worker", "uploader"))
    return text + (f"+{by_role['child']:.1f}" if "child" in by_role else "")


def table_row(cells: list[str]) -> str:
    return "  ".join(cell.rjust(width) if i else cell.ljust(width)
                     for i, (cell, (_, width, _)) in enumerate(zip(cells, COLUMNS)))


def problems(result: dict[str, Any]) -> list[str]:
    notes = [f"{key}={result[key]}" for key in ("foreign", "corrupt", "bad_timestamps",
                                                 "misordered", "oversize_records",
                                                 "wrong_group")
             if result.get(key)]
    notes += result.get("bad_files", []) + result.get("send_errors", [])
    if result.get("quiet") is False:
        notes.append("records were still arriving at --timeout (or the relay died)")
    if result.get("error"):
        notes.append(result["error"])
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", action="append", type=parse_scenario,
                        help=f"tcp<N>-lf, tcp<N>-octet, udp-<rate>, gelf-udp-<rate> or "
                             f"gelf<K>-udp-<rate> (K chunks per message); repeatable "
                             f"(default: {' '.join(DEFAULT_SCENARIOS)})")
    parser.add_argument("--messages", type=int, default=1_000_000, help="messages per scenario")
    parser.add_argument("--size", type=int, default=200,
                        help="bytes per message (about 100 at least, 150 for GELF)")
    parser.add_argument("--flush-interval", type=float, default=1.0,
                        help="passed to the relay; the default quiet period is twice this")
    parser.add_argument("--flush-size", type=int, help="passed to the relay")
    parser.add_argument("--quiet", type=float,
                        help="seconds without a new record that end a run "
                             "(default: 2 x --flush-interval; 5 with --legacy)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="bound on sending plus waiting for records, per scenario")
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    parser.add_argument("--stop-timeout", type=float, default=120.0,
                        help="how long SIGTERM may take before the relay is killed")
    parser.add_argument("--relay-cmd",
                        help="command that runs the relay, split like a shell does (default: "
                             "this checkout, run by this Python)")
    parser.add_argument("--relay-arg", action="append", default=[],
                        help="extra relay option, repeatable; write --relay-arg=--debug")
    parser.add_argument("--legacy", action="store_true",
                        help="the relay is kinesyslog 2.x: no --output-dir, a local Firehose "
                             "stand-in keeps records in the spool, where they are counted")
    parser.add_argument("--tmp-dir", help="where the spool and output directories go")
    parser.add_argument("--keep", action="store_true", help="keep spool, records and relay log")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    scenarios = args.scenario or [parse_scenario(name) for name in DEFAULT_SCENARIOS]
    if args.quiet is None:
        args.quiet = 5.0 if args.legacy else 2 * args.flush_interval
    if args.messages < 1:
        parser.error("--messages must be at least 1")

    base_second = int(time.time()) - args.messages // 1000 - 3600
    makers = {"syslog": make_messages, "gelf": make_gelf_messages}
    try:
        messages = {protocol: makers[protocol](args.messages, args.size, base_second)
                    for protocol in sorted({scenario.protocol for scenario in scenarios})}
    except ValueError as error:
        parser.error(str(error))

    stub = None
    if args.legacy:
        stub = ThreadingHTTPServer(("127.0.0.1", 0), StubFirehose)
        threading.Thread(target=stub.serve_forever, name="stub-firehose", daemon=True).start()
    stub_url = f"http://127.0.0.1:{stub.server_address[1]}" if stub else None

    args.results_dir.mkdir(parents=True, exist_ok=True)
    results_path = args.results_dir / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"cpus": os.cpu_count(), "kernel": platform.release(),
                 "python": platform.python_version(), "machine": platform.machine()},
        "git_commit": git_commit(),
        "options": {key: value for key, value in vars(args).items()
                    if key not in ("scenario", "results_dir")},
        "results": [],
    }
    print(table_row([name for name, _, _ in COLUMNS]), flush=True)
    try:
        for scenario in scenarios:
            try:
                result = run_scenario(args, scenario, messages[scenario.protocol],
                                      base_second, stub_url)
            except (RelayError, OSError, ValueError) as error:  # before the relay started
                result = {"scenario": scenario.name, "transport": scenario.transport,
                          "error": str(error)}
            report["results"].append(result)
            results_path.write_text(json.dumps(report, indent=2) + "\n")
            print(table_row([column(result) for _, _, column in COLUMNS]), flush=True)
            for note in problems(result):
                print(f"  ! {note}", flush=True)
            if Path(result.get("workdir", "/nonexistent")).exists():
                print(f"  kept: {result['workdir']}", flush=True)
    except KeyboardInterrupt:
        print("interrupted; the relay was stopped", file=sys.stderr)
        return 130
    finally:
        if stub:
            stub.shutdown()
    print(f"results: {results_path}")
    failed = any(r.get("error") or r.get("lost") or r.get("bad_files") for r in report["results"]
                 if r["transport"] == "tcp")
    return 1 if failed else 0


def git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


if __name__ == "__main__":
    sys.exit(main())
