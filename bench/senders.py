"""Sending the messages: TCP from Python threads; UDP from bench/udp_blast.c (sendmmsg, built
with gcc at run time) or, without gcc or with --udp-sender python, from one Python thread."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

SEND_CHUNK = 1024 * 1024  # bytes per sendall() on TCP
SEND_TIMEOUT = 120.0  # a TCP send that makes no progress for this long fails the scenario
UDP_BURSTS_PER_SECOND = 1000  # the Python sender's pacing
BLAST_SOURCE = Path(__file__).resolve().parent / "udp_blast.c"
BUILD_DIR = Path(__file__).resolve().parent / ".build"  # git-ignored
COMPILE_TIMEOUT = 120.0


@dataclass
class SendResult:
    started: float  # wall clock (file mtimes are wall clock too)
    seconds: float
    sent: int
    errors: list[str] = field(default_factory=list)
    sender: str = "python"


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA and the relay's certificate for the tls<N> scenarios."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def create(cls, directory: Path) -> TlsFiles:
        from tests.certs import issue, make_ca  # cryptography, a test dependency

        ca = make_ca(directory / "pki", "bench-ca")
        server = issue(ca, directory / "pki", "relay")
        return cls(ca.cert, server.cert, server.key)

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def send_tcp(port: int, payloads: list[bytes], counts: list[int],
             tls: ssl.SSLContext | None = None) -> SendResult:
    """Sends each payload over its own connection (inside TLS when ``tls`` is given), all at
    once, in large sendall() chunks."""
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=SEND_TIMEOUT)
               for _ in payloads]
    if tls is not None:
        sockets = [tls.wrap_socket(sock, server_hostname="localhost") for sock in sockets]
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


def build_c(source_path: Path) -> Path | None:
    """A C program of bench/ compiled with gcc -O2, cached by the source's hash under
    bench/.build/; None (after a warning) when gcc is missing or fails."""
    source = source_path.read_bytes()
    binary = BUILD_DIR / f"{source_path.stem}-{hashlib.sha256(source).hexdigest()[:16]}"
    if binary.exists():
        return binary
    gcc = shutil.which("gcc")
    if gcc is None:
        print(f"warning: gcc not found: cannot build {source_path.name}", file=sys.stderr)
        return None
    BUILD_DIR.mkdir(exist_ok=True)
    partial = binary.with_name(f".{binary.name}.{os.getpid()}")
    try:
        done = subprocess.run([gcc, "-O2", "-Wall", "-o", str(partial), str(source_path)],
                              capture_output=True, text=True, timeout=COMPILE_TIMEOUT,
                              check=False)
        if done.returncode != 0:
            print(f"warning: gcc failed on {source_path.name}: {done.stderr.strip()}",
                  file=sys.stderr)
            return None
        os.replace(partial, binary)
    except (OSError, subprocess.TimeoutExpired) as error:
        print(f"warning: could not build {source_path.name} ({error})", file=sys.stderr)
        return None
    finally:
        partial.unlink(missing_ok=True)
    return binary


def build_blaster() -> Path | None:
    """bench/udp_blast.c built (build_c); None, and UDP goes out from the Python sender,
    when it cannot be."""
    binary = build_c(BLAST_SOURCE)
    if binary is None:
        print("warning: UDP is sent by the Python sender, which may not reach the "
              "scenario's rate", file=sys.stderr)
    return binary


def write_datagrams(path: Path, datagrams: list[bytes]) -> Path:
    """The file udp_blast reads: each datagram as a 4-byte little-endian length + bytes.

    Written through to the disk before it is used: left to the kernel's writeback (30 s
    later), its hundreds of MB would queue ahead of the relay's own writes in the middle of
    a run, stalling its fsyncs, and the relay's ring would fill."""
    pack = struct.Struct("<I").pack
    with open(path, "wb") as file:
        file.writelines(pack(len(datagram)) + datagram for datagram in datagrams)
        file.flush()
        os.fsync(file.fileno())
    return path


def send_udp_blast(binary: Path, datagram_file: Path, port: int, rate: int, per_message: int,
                   batch: int, timeout: float, segments: int = 1) -> SendResult:
    """Runs udp_blast (rate messages per second, so rate * per_message datagrams; up to
    ``segments`` datagrams per UDP GSO send) and reads its JSON line. It is killed by pid on
    a timeout, an error or Ctrl-C."""
    command = [str(binary), str(datagram_file), str(port), str(rate * per_message),
               str(batch), str(per_message), str(segments)]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise OSError(f"udp_blast did not finish within {timeout:.0f} s") from None
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    if proc.returncode != 0:
        raise OSError(f"udp_blast exited with {proc.returncode}: {stderr.decode().strip()}")
    report = json.loads(stdout.decode().strip().splitlines()[-1])
    errors = [f"{count} x {errno.errorcode.get(int(number), 'errno ' + number)}"
              for number, count in report["errors"].items()]
    return SendResult(report["started"], report["seconds"], report["sent"], errors, "c")
