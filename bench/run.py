#!/usr/bin/env python3
"""Throughput and memory benchmark of a syslog relay, end to end: socket → records on disk
(or in S3 through a local moto Firehose, or in a moto Kinesis data stream), our relay beside
rsyslog.

Each run starts a fresh system (our relay or rsyslogd, in new directories), sends N numbered
RFC 5424 (or GELF 1.1) messages, waits until all were delivered or nothing new came for a
while, stops the system by pid and only then checks every delivered message, so loss and
duplicates are counted exactly.
See bench/README.md for the options and the columns. Run by hand, after `make build`, from
the repository:
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
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.procs import udp_rcvbuf_errors  # noqa: E402
from bench.senders import (  # noqa: E402
    SendResult,
    TlsFiles,
    build_blaster,
    send_tcp,
    send_udp,
    send_udp_blast,
    write_datagrams,
)
from bench.systems import (  # noqa: E402
    DESTINATIONS,
    Kinesyslog,
    Rsyslog,
    StartError,
    Stub,
    System,
)
from bench.verify import GELF_SEQ_DIGITS, SD_ID, Tally  # noqa: E402
from kinesyslog.constants import GELF_CHUNK_MAGIC, GELF_MAX_CHUNKS  # noqa: E402

DEFAULT_SCENARIOS = ("tcp1-lf", "tcp1-octet", "tcp8-lf", "tcp8-octet", "udp-50000")
SYSTEMS = ("kinesyslog", "rsyslog")
MB = 1_000_000
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
    tls: bool = False  # TCP inside TLS (the relay's --tls-port)


def parse_scenario(name: str) -> Scenario:
    tcp = re.fullmatch(r"(tcp|tls)([1-9]\d{0,2})-(lf|octet)", name)
    if tcp:
        return Scenario(name, "tcp", int(tcp[2]), tcp[3], 0, tls=tcp[1] == "tls")
    udp = re.fullmatch(r"udp-([1-9]\d*)", name)
    if udp:
        return Scenario(name, "udp", 1, "datagram", int(udp[1]))
    gelf = re.fullmatch(r"gelf([1-9]\d{0,2})?-udp-([1-9]\d*)", name)
    if gelf and int(gelf[1] or 1) <= GELF_MAX_CHUNKS:
        return Scenario(name, "udp", 1, "datagram", int(gelf[2]), "gelf", int(gelf[1] or 1))
    raise argparse.ArgumentTypeError(
        f"unknown scenario {name!r}: use tcp<N>-lf, tcp<N>-octet, tls<N>-lf, tls<N>-octet, "
        f"udp-<rate>, gelf-udp-<rate> "
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
    datagrams: list[bytes] = []
    for seq, message in enumerate(messages):
        if len(message) < count:
            raise ValueError(f"a {len(message)}-byte message cannot make {count} chunks")
        header = GELF_CHUNK_MAGIC + (salt | seq).to_bytes(8, "big")
        length = len(message)
        datagrams += (header + bytes((k, count)) + message[length * k // count:
                                                           length * (k + 1) // count]
                      for k in range(count))
    return datagrams


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




# --- one run ------------------------------------------------------------------------------------

class Payloads:
    """What is sent, built once per scenario shape and reused by every run: TCP payloads per
    connection, UDP datagrams (GELF chunks), and the file the C UDP sender reads."""

    def __init__(self, messages: dict[str, list[bytes]], data_dir: Path) -> None:
        self.messages = messages
        self.data_dir = data_dir
        self._tcp: dict[tuple[int, str], list[bytes]] = {}
        self._datagrams: dict[tuple[str, int], list[bytes]] = {}
        self._files: dict[tuple[str, int], Path] = {}

    def tcp(self, scenario: Scenario) -> list[bytes]:
        key = (scenario.connections, scenario.framing)
        if key not in self._tcp:
            self._tcp.clear()  # one scenario's payloads at a time: they are large
            messages = self.messages[scenario.protocol]
            self._tcp[key] = [frame(messages[part.start:part.stop], scenario.framing)
                              for part in split_evenly(len(messages), scenario.connections)]
        return self._tcp[key]

    def datagrams(self, scenario: Scenario) -> list[bytes]:
        key = (scenario.protocol, scenario.chunks)
        if key not in self._datagrams:
            messages = self.messages[scenario.protocol]
            self._datagrams[key] = (gelf_chunks(messages, scenario.chunks)
                                    if scenario.chunks > 1 else messages)
        return self._datagrams[key]

    def datagram_file(self, scenario: Scenario) -> Path:
        key = (scenario.protocol, scenario.chunks)
        if key not in self._files:
            path = self.data_dir / f"datagrams-{scenario.protocol}-{scenario.chunks}.bin"
            self._files[key] = write_datagrams(path, self.datagrams(scenario))
        return self._files[key]


@dataclass
class Context:
    """What every run shares."""

    args: argparse.Namespace
    payloads: Payloads
    base_second: int
    stub_url: str | None
    blaster: Path | None  # the compiled C UDP sender; None: the Python one
    tls: TlsFiles | None  # the relay's certificate for tls<N> scenarios


def make_system(context: Context, name: str, scenario: Scenario, workdir: Path) -> System:
    if name == "rsyslog":
        return Rsyslog(context.args, workdir, scenario.transport)
    return Kinesyslog(context.args, workdir, scenario.transport, scenario.protocol == "gelf",
                      context.stub_url, context.tls if scenario.tls else None)


def send(context: Context, scenario: Scenario, system: System) -> SendResult:
    if scenario.transport == "tcp":
        payloads = context.payloads.tcp(scenario)
        parts = split_evenly(len(context.payloads.messages[scenario.protocol]),
                             scenario.connections)
        tls = context.tls.client_context() if scenario.tls and context.tls else None
        return send_tcp(system.tcp_port, payloads, [len(part) for part in parts], tls)
    if context.blaster:
        return send_udp_blast(context.blaster, context.payloads.datagram_file(scenario),
                              system.udp_port, scenario.rate, scenario.chunks,
                              context.args.udp_batch, context.args.timeout,
                              context.args.udp_segments)
    return send_udp(system.udp_port, context.payloads.datagrams(scenario), scenario.rate,
                    scenario.chunks)


def run_scenario(context: Context, scenario: Scenario, system_name: str,
                 repetition: int) -> dict[str, Any]:
    args = context.args
    messages = context.payloads.messages[scenario.protocol]
    count = len(messages)
    result: dict[str, Any] = {"scenario": scenario.name, "system": system_name,
                              "repetition": repetition, "transport": scenario.transport,
                              "protocol": scenario.protocol, "messages": count,
                              "size": args.size}
    if system_name == "rsyslog" and scenario.protocol == "gelf":
        result["skipped"] = "rsyslog has no GELF input"
        return result
    if system_name == "rsyslog" and scenario.tls:
        result["skipped"] = "the harness gives rsyslog no TLS input"
        return result
    if scenario.transport == "tcp":
        result["payload_bytes"] = sum(map(len, context.payloads.tcp(scenario)))
    if scenario.chunks > 1:
        result.update(chunks_per_message=scenario.chunks,
                      datagrams=len(context.payloads.datagrams(scenario)))
    if scenario.transport == "udp" and context.blaster:
        context.payloads.datagram_file(scenario)  # written before the system starts
    workdir = Path(tempfile.mkdtemp(prefix=f"kinesyslog-bench-{scenario.name}-{system_name}-",
                                    dir=args.tmp_dir))
    system = make_system(context, system_name, scenario, workdir)
    result.update(command=system.command(), workdir=str(workdir))
    if isinstance(system, Kinesyslog):
        result["firehose"] = (args.firehose if system.moto else "stub" if args.legacy
                              else "output-dir")
    checker = system.checker(messages, scenario.connections, scenario.protocol == "gelf",
                             context.base_second)
    try:
        try:
            try:
                # What earlier runs left unwritten (rsyslog's output is never fsynced, and is
                # read back before it is deleted) goes to disk now, not in the kernel's
                # writeback 30 s later, in the middle of this run, ahead of its fsyncs.
                os.sync()
                system.start()
                deadline = time.monotonic() + args.timeout
                udp_errors_before = udp_rcvbuf_errors()
                sent = send(context, scenario, system)
                result.update(system.wait_delivered(checker, deadline))
                system.final_sample()
                udp_errors = udp_rcvbuf_errors() - udp_errors_before
            finally:
                result["exit_code"] = system.stop()
            result.update(
                sender=sent.sender, sent=sent.sent, send_errors=sent.errors,
                send_seconds=round(sent.seconds, 3),
                send_rate=round(sent.sent / sent.seconds) if sent.seconds else None,
                udp_rcvbuf_errors=udp_errors,
            )
            result.update(system.results())
            tally = system.check(checker)  # moto must still run: it is stopped after this
            result.update(system.read_stats())
        finally:
            system.cleanup()
    except (StartError, OSError, threading.BrokenBarrierError) as error:
        result["error"] = f"{type(error).__name__}: {error} (log: {system.log_path})"
        return result
    except KeyboardInterrupt:  # everything is stopped; what it left is of no use
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    result.update(records_summary(tally, count, args.size, sent.started))
    if not args.keep and not problems(result):
        shutil.rmtree(workdir, ignore_errors=True)
    return result


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


# --- output -------------------------------------------------------------------------------------

def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


ROLE_LETTERS = {"listener": "L", "worker": "W", "uploader": "U", "rsyslogd": "R", "child": "+"}


def per_process(result: dict[str, Any]) -> str:
    """CPU seconds / peak RSS MB / peak PSS MB of each role: L(istener) W(orker) U(ploader),
    R(syslogd), + other children (kinesyslog 2.x's)."""
    cpu = result.get("cpu_by_role", {})
    rss, pss = result.get("rss_mb_by_role", {}), result.get("pss_mb_by_role", {})
    return " ".join(f"{ROLE_LETTERS.get(role, role)}{cpu[role]:.1f}/{rss.get(role, 0):.0f}/"
                    f"{pss.get(role, 0):.0f}"
                    for role in sorted(cpu, key=lambda r: list(ROLE_LETTERS).index(r)
                                       if r in ROLE_LETTERS else 99)) or "-"


Column = tuple[str, int, Callable[[dict[str, Any]], str]]
SYSTEM_COLUMN: Column = ("system", 10, lambda r: r.get("system", "-"))
UDP_COLUMNS: list[Column] = [
    ("kdrop", 7, lambda r: _fmt(r.get("udp_socket_drops"))),
    ("rcvbuf", 7, lambda r: _fmt(r.get("udp_rcvbuf_errors"))),
]
MOTO_COLUMN: Column = ("moto_cpu", 8, lambda r: _fmt(r.get("moto_cpu_seconds"), 1))


def columns(show_system: bool, show_udp: bool, show_moto: bool) -> list[Column]:
    return [
        ("scenario", 15, lambda r: r["scenario"]),
        *([SYSTEM_COLUMN] if show_system else []),
        ("sent", 9, lambda r: _fmt(r.get("sent"))),
        ("lost", 7, lambda r: _fmt(r.get("lost"))),
        ("dup", 5, lambda r: _fmt(r.get("duplicates"))),
        *(UDP_COLUMNS if show_udp else []),
        ("elapsed_s", 9, lambda r: _fmt(r.get("elapsed_seconds"), 2)),
        ("t95_s", 7, lambda r: _fmt(r.get("t95_seconds"), 2)),
        ("msgs/s", 9, lambda r: _fmt(r.get("msgs_per_sec"))),
        ("MB/s", 7, lambda r: _fmt(r.get("mb_per_sec"), 1)),
        ("send/s", 9, lambda r: _fmt(r.get("send_rate"))),
        ("cpu_s", 6, lambda r: _fmt(r.get("cpu_seconds"), 1)),
        ("rss_MB", 7, lambda r: _fmt(r.get("peak_rss_mb"), 0)),
        ("pss_MB", 7, lambda r: _fmt(r.get("peak_pss_mb"), 0)),
        ("hwm_MB", 7, lambda r: _fmt(r.get("hwm_mb"), 0)),
        *([MOTO_COLUMN] if show_moto else []),
        ("records", 7, lambda r: _fmt(r.get("records"))),
        ("exit", 4, lambda r: _fmt(r.get("exit_code"))),
        ("cpu_s/rss/pss per process", 32, per_process),
    ]


TEXT_COLUMNS = ("scenario", "system", "cpu_s/rss/pss per process")


def table_row(cells: list[str], headers: list[str], widths: list[int]) -> str:
    """Text columns left-aligned, numbers right-aligned."""
    return "  ".join(cell.ljust(width) if header in TEXT_COLUMNS else cell.rjust(width)
                     for cell, header, width in zip(cells, headers, widths)).rstrip()


def problems(result: dict[str, Any]) -> list[str]:
    notes = [f"{key}={result[key]}" for key in ("foreign", "corrupt", "bad_timestamps",
                                                 "misordered", "oversize_records",
                                                 "wrong_group")
             if result.get(key)]
    notes += result.get("bad_files", []) + result.get("send_errors", [])
    if result.get("quiet") is False:
        notes.append("messages were still arriving at --timeout (or the system died)")
    if result.get("error"):
        notes.append(result["error"])
    return notes


SUMMARY_METRICS = [  # (header, result key, digits)
    ("msgs/s", "msgs_per_sec", 0),
    ("MB/s", "mb_per_sec", 1),
    ("t95_s", "t95_seconds", 2),
    ("cpu_s", "cpu_seconds", 2),
    ("start_cpu_s", "startup_cpu_seconds", 2),
    ("cpu_us/msg", "cpu_us_per_msg", 2),
    ("run_us/msg", "run_cpu_us_per_msg", 2),
    ("rss_MB", "peak_rss_mb", 0),
    ("pss_MB", "peak_pss_mb", 0),
    ("lost", "lost", 0),
    ("kdrop", "udp_socket_drops", 0),
]


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians per scenario and system over the repetitions, and ours/rsyslog ratios."""
    rows: list[dict[str, Any]] = []
    for scenario in dict.fromkeys(r["scenario"] for r in results):
        medians: dict[str, dict[str, Any]] = {}
        for system in SYSTEMS:
            runs = [r for r in results if r["scenario"] == scenario and r.get("system") == system
                    and not r.get("skipped") and not r.get("error")]
            if not runs:
                continue
            for run in runs:
                if run.get("cpu_seconds") is not None and run.get("delivered"):
                    run["cpu_us_per_msg"] = round(run["cpu_seconds"] * 1e6 / run["delivered"], 2)
                    # Without the start-up (until ready), which an operator pays once.
                    start = run.get("startup_cpu_seconds") or 0.0
                    run["run_cpu_us_per_msg"] = round(
                        (run["cpu_seconds"] - start) * 1e6 / run["delivered"], 2)
            row: dict[str, Any] = {"scenario": scenario, "system": system, "runs": len(runs)}
            for _, key, _ in SUMMARY_METRICS:
                values = [r[key] for r in runs if r.get(key) is not None]
                row[key] = statistics.median(values) if values else None
            medians[system] = row
            rows.append(row)
        if len(medians) == 2:
            ours, theirs = medians["kinesyslog"], medians["rsyslog"]
            ratio: dict[str, Any] = {"scenario": scenario, "system": "ours/rsyslog", "runs": None}
            for _, key, _ in SUMMARY_METRICS:
                a, b = ours.get(key), theirs.get(key)
                ratio[key] = round(a / b, 2) if a is not None and b else None
            rows.append(ratio)
    return rows


def print_summary(rows: list[dict[str, Any]]) -> None:
    headers = ["scenario", "system", "runs", *(name for name, _, _ in SUMMARY_METRICS)]
    widths = [15, 12, 4, *(max(9, len(name)) for name, _, _ in SUMMARY_METRICS)]
    print("\nmedians per scenario and system (ours/rsyslog: ratio of the medians)")
    print(table_row(headers, headers, widths))
    for row in rows:
        ratio = row["system"] == "ours/rsyslog"
        cells = [row["scenario"], row["system"], _fmt(row["runs"])]
        cells += [_fmt(None if row[key] is None else float(row[key]), 2 if ratio else digits)
                  for _, key, digits in SUMMARY_METRICS]
        print(table_row(cells, headers, widths))


# --- main ---------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", action="append", type=parse_scenario,
                        help=f"tcp<N>-lf, tcp<N>-octet, udp-<rate>, gelf-udp-<rate> or "
                             f"gelf<K>-udp-<rate> (K chunks per message); repeatable "
                             f"(default: {' '.join(DEFAULT_SCENARIOS)})")
    parser.add_argument("--system", action="append", choices=SYSTEMS,
                        help="what to measure, repeatable (default: kinesyslog); with both, "
                             "their runs alternate")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per scenario and system; the summary shows medians")
    parser.add_argument("--messages", type=int, default=1_000_000, help="messages per scenario")
    parser.add_argument("--size", type=int, default=200,
                        help="bytes per message (about 100 at least, 150 for GELF)")
    parser.add_argument("--flush-interval", type=float, default=1.0,
                        help="passed to the relay (rsyslog: omfile flushInterval, whole "
                             "seconds); the default quiet period is twice this")
    parser.add_argument("--flush-size", type=int,
                        help="passed to the relay (rsyslog: omfile ioBufferSize; default 4 MiB)")
    parser.add_argument("--quiet", type=float,
                        help="seconds without new deliveries that end a run "
                             "(default: 2 x --flush-interval; 5 with --legacy)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="bound on sending plus waiting for deliveries, per run")
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    parser.add_argument("--stop-timeout", type=float, default=120.0,
                        help="how long SIGTERM may take before the system is killed")
    parser.add_argument("--firehose", "--destination", choices=DESTINATIONS,
                        default="output-dir",
                        help="where our relay delivers: --output-dir; a private moto_server "
                             "Firehose into S3 (moto); or a moto Kinesis data stream of 4 "
                             "shards, with --kinesis-format cwl (kinesis-cwl), kpl "
                             "(kinesis-kpl) or kpl --kinesis-compress (kinesis-kpl-gzip); "
                             "the uploader then works too")
    parser.add_argument("--udp-sender", choices=("c", "python"), default="c",
                        help="UDP sender: bench/udp_blast.c (sendmmsg, built with gcc) or one "
                             "Python thread")
    parser.add_argument("--udp-batch", type=int, default=64,
                        help="datagrams per sendmmsg() call of the C sender (1..1024)")
    parser.add_argument("--udp-segments", type=int, default=1,
                        help="the C sender sends up to this many datagrams of one size in one "
                             "UDP GSO buffer (UDP_SEGMENT), which the kernel cuts into the same "
                             "datagrams: less sender CPU on the shared cores (1..64; 1: no GSO)")
    parser.add_argument("--relay-cmd",
                        help="command that runs the relay, split like a shell does (default: "
                             "this checkout, run by this Python)")
    parser.add_argument("--relay-arg", action="append", default=[],
                        help="extra relay option, repeatable; write --relay-arg=--debug")
    parser.add_argument("--legacy", action="store_true",
                        help="the relay is kinesyslog 2.x: no --output-dir, a local Firehose "
                             "stand-in keeps records in the spool, where they are counted")
    parser.add_argument("--rsyslogd", default="/usr/sbin/rsyslogd", help="rsyslogd to run")
    parser.add_argument("--rsyslog-template", choices=("raw", "json"), default="raw",
                        help="rsyslog writes each message as received (raw) or as JSON with "
                             "its parsed timestamp (json)")
    parser.add_argument("--tmp-dir", help="where the work directories go")
    parser.add_argument("--keep", action="store_true",
                        help="keep work directories (spool, records, output, logs)")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    args.scenario = args.scenario or [parse_scenario(name) for name in DEFAULT_SCENARIOS]
    args.system = list(dict.fromkeys(args.system or ["kinesyslog"]))
    if args.quiet is None:
        args.quiet = 5.0 if args.legacy else 2 * args.flush_interval
    if args.messages < 1:
        parser.error("--messages must be at least 1")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if not 1 <= args.udp_batch <= 1024:
        parser.error("--udp-batch must be 1..1024")
    if not 1 <= args.udp_segments <= 64:
        parser.error("--udp-segments must be 1..64")
    if args.legacy and args.firehose != "output-dir":
        parser.error(f"--legacy runs against its own stand-in, not --firehose {args.firehose}")
    return args


def schedule(args: argparse.Namespace) -> list[tuple[Scenario, int, str]]:
    """Every scenario's repetitions in turn; with two systems, each repetition runs both,
    the first one alternating (A B, B A, A B, ...) so that drift affects both alike."""
    runs = []
    for scenario in args.scenario:
        for repetition in range(args.repeat):
            order = args.system if repetition % 2 == 0 else args.system[::-1]
            runs += [(scenario, repetition, system) for system in order]
    return runs


def interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the harness like Ctrl-C: everything it started too


def compile_checkout() -> None:
    """Byte-compiles this checkout's package into its __pycache__ directories (git-ignored),
    so that the relay starts as an installed one does (pip, the .deb and the executables all
    carry bytecode). Without it, where PYTHONDONTWRITEBYTECODE is set, every start would
    compile the sources again: 0.05-0.1 s more start-up CPU and about 0.9 MB more memory."""
    import compileall

    if not compileall.compile_dir(ROOT / "kinesyslog", quiet=1):
        print("warning: could not byte-compile kinesyslog/", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scenarios: list[Scenario] = args.scenario
    base_second = int(time.time()) - args.messages // 1000 - 3600
    makers = {"syslog": make_messages, "gelf": make_gelf_messages}
    try:
        messages = {protocol: makers[protocol](args.messages, args.size, base_second)
                    for protocol in sorted({scenario.protocol for scenario in scenarios})}
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    if "kinesyslog" in args.system and not args.relay_cmd:
        compile_checkout()
    blaster = None
    if args.udp_sender == "c" and any(s.transport == "udp" for s in scenarios):
        blaster = build_blaster()
    # Ctrl-C (even where a shell started the harness with SIGINT ignored) and SIGTERM stop
    # the harness, and with it everything it started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)
    stub = Stub() if args.legacy else None
    data_dir = Path(tempfile.mkdtemp(prefix="kinesyslog-bench-data-", dir=args.tmp_dir))
    tls = TlsFiles.create(data_dir) if any(s.tls for s in scenarios) else None
    context = Context(args, Payloads(messages, data_dir), base_second,
                      stub.url if stub else None, blaster, tls)

    args.results_dir.mkdir(parents=True, exist_ok=True)
    results_path = args.results_dir / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"cpus": os.cpu_count(), "kernel": platform.release(),
                 "python": platform.python_version(), "machine": platform.machine(),
                 "loadavg_at_start": os.getloadavg()},
        "git_commit": git_commit(),
        "rsyslogd_version": rsyslogd_version(args.rsyslogd) if "rsyslog" in args.system
        else None,
        "options": {key: value for key, value in vars(args).items()
                    if key not in ("scenario", "results_dir")},
        "scenarios": [scenario.name for scenario in scenarios],
        "udp_sender": "c" if blaster else "python",
        "results": [],
    }
    table = columns(args.system != ["kinesyslog"], any(s.transport == "udp" for s in scenarios),
                    args.firehose != "output-dir")
    headers, widths = [name for name, _, _ in table], [width for _, width, _ in table]
    print(table_row(headers, headers, widths), flush=True)
    try:
        for scenario, repetition, system_name in schedule(args):
            try:
                result = run_scenario(context, scenario, system_name, repetition)
            except (StartError, OSError, ValueError) as error:  # before the system started
                result = {"scenario": scenario.name, "system": system_name,
                          "transport": scenario.transport, "error": str(error)}
            report["results"].append(result)
            results_path.write_text(json.dumps(report, indent=2) + "\n")
            if result.get("skipped"):
                print(f"{scenario.name:15}  {system_name:10}  skipped: {result['skipped']}")
                continue
            print(table_row([column(result) for _, _, column in table], headers, widths),
                  flush=True)
            for note in problems(result):
                print(f"  ! {note}", flush=True)
            if Path(result.get("workdir", "/nonexistent")).exists():
                print(f"  kept: {result['workdir']}", flush=True)
    except KeyboardInterrupt:
        print("interrupted; everything the harness started was stopped", file=sys.stderr)
        return 130
    finally:
        if stub:
            stub.shutdown()
        shutil.rmtree(data_dir, ignore_errors=True)
    if args.repeat > 1 or len(args.system) > 1:
        report["summary"] = summarize(report["results"])
        results_path.write_text(json.dumps(report, indent=2) + "\n")
        print_summary(report["summary"])
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


def rsyslogd_version(binary: str) -> str | None:
    try:
        done = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (done.stdout.splitlines() or [""])[0].strip() or None


if __name__ == "__main__":
    sys.exit(main())
