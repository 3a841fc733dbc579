"""GELF from the PyPI libraries pygelf and graypy, through Python `logging`, against the real
relay started with `--gelf`.

Cases: pygelf's GelfUdpHandler uncompressed and zlib-compressed, graypy's GELFUDPHandler
(zlib, its default), all with a small chunk size so that the long messages (3 to 20 KB of text
with non-ASCII characters, quotes, braces and control characters) go out in many chunks; and
pygelf's GelfTcpHandler and graypy's GELFTCPHandler (NUL-terminated documents).

The handler's `makePickle` is wrapped to keep each document exactly as the library produced it
(zlib-compressed over UDP, NUL-terminated over TCP), and the handler's UDP socket is wrapped to
count the datagrams and chunks it sends and to pace them by the relay's receive queue (read
from /proc/net/udp), so that no datagram is lost in the kernel and every one must arrive.
After the relay wrote every event it is stopped, and each event is compared with what the
sender meant (docs/contract.md §4.5, §4.6, §4.8, §4.9, §5.1): its message is the produced
document, decompressed and without the NUL; each document was relayed exactly once, over TCP
in sending order; the log group is `/kinesyslog/gelf/<port>` and the stream 127.0.0.1; the
document's fields (short_message, host, level, version, the `_` fields) are the ones logged;
and the event's timestamp is the document's `timestamp` (the record's creation time) in
milliseconds, sub-millisecond digits cut. Missing libraries skip with the pip command that
installs them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import socket
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.chaos.harness import ports, relay_log_tail
from tests.e2e.relay_process import wait_for
from tests.interop.conftest import RelayUnderTest, check_messages, running_relay

pytestmark = pytest.mark.interop

COUNT = 150
LONG_EVERY = 3  # every third message is long
LONG_BYTES = (3_000, 20_000)  # UTF-8 bytes of a long message's text
MAX_MESSAGE_SIZE = 65_536  # the relay's default --max-message-size: documents must fit
APP_NAME = "kinesyslog-interop"
LOCALNAME = "app01.example"
FACILITY = "interop"
USER = "jörg ünïcødé"
SYSLOG_LEVELS = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
                 logging.DEBUG: 7}
LEVELS = list(SYSLOG_LEVELS)
# Pacing of UDP sends: every PACE_DATAGRAMS datagrams the sender waits (at most PACE_TIMEOUT)
# until the relay's socket holds less than PACE_QUEUE bytes, so that the kernel never drops a
# datagram however slowly the relay is scheduled on a busy machine (the socket's buffer is at
# least 416 KiB: twice net.core.rmem_max's default, which caps it for an unprivileged relay).
PACE_DATAGRAMS = 16
PACE_QUEUE = 128 * 1024
PACE_TIMEOUT = 10.0
ALPHABET = ("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:-_/!?"
            "{}[]\"\\\n\t\x00\x1f äöüßÄÖÜ éèêçñ жщюяЖЩ 日本語漢字 שלום 😀🚀€")
WORDS = ["grüße", "Ünïcødé", "мир", "日本", "{\"k\": [1, 2]}", "back\\slash", "tab\there", "ok"]


@pytest.fixture
def gelf_relay(tmp_path: Path) -> Iterator[RelayUnderTest]:
    """The real relay with --gelf on one free loopback port for TCP and UDP, writing to an
    output dir."""
    (port,) = ports(1)
    with running_relay(tmp_path, port, ["--tcp-port", str(port), "--udp-port", str(port)],
                       ["--gelf"]) as relay:
        yield relay


def pygelf_udp(compress: bool, chunk_size: int) -> Callable[[ModuleType, int], logging.Handler]:
    def build(module: ModuleType, port: int) -> logging.Handler:
        handler: logging.Handler = module.GelfUdpHandler(
            host="127.0.0.1", port=port, compress=compress, chunk_size=chunk_size,
            include_extra_fields=True, _app_name=APP_NAME)
        return handler
    return build


def pygelf_tcp(module: ModuleType, port: int) -> logging.Handler:
    handler: logging.Handler = module.GelfTcpHandler(
        host="127.0.0.1", port=port, include_extra_fields=True, _app_name=APP_NAME)
    return handler


def graypy_udp(module: ModuleType, port: int) -> logging.Handler:
    handler: logging.Handler = module.GELFUDPHandler(
        "127.0.0.1", port, gelf_chunker=module.GELFWarningChunker(chunk_size=512),
        localname=LOCALNAME, facility=FACILITY)
    return handler


def graypy_tcp(module: ModuleType, port: int) -> logging.Handler:
    handler: logging.Handler = module.GELFTCPHandler("127.0.0.1", port, localname=LOCALNAME,
                                                     facility=FACILITY)
    return handler


def pygelf_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {"version": "1.1", "host": socket.gethostname(), "_app_name": APP_NAME}


def graypy_fields(record: logging.LogRecord) -> dict[str, Any]:
    # graypy adds its debugging fields by default; facility= adds the logger's name.
    return {"version": "1.0", "host": LOCALNAME, "facility": FACILITY, "_logger": record.name,
            "line": record.lineno, "_pid": os.getpid()}


@dataclass(frozen=True)
class Case:
    name: str
    module: str  # what to import; the handler classes are its attributes
    pip: str  # the requirement that installs it
    build: Callable[[ModuleType, int], logging.Handler]
    transport: str  # "udp" or "tcp"
    compressed: bool  # zlib over UDP
    fields: Callable[[logging.LogRecord], dict[str, Any]]  # library-specific document fields


PYGELF = "'pygelf>=0.4,<1'"
GRAYPY = "'graypy>=2.1,<3'"
CASES = [
    Case("pygelf-udp-plain", "pygelf.handlers", PYGELF, pygelf_udp(False, 1024), "udp", False,
         pygelf_fields),
    Case("pygelf-udp-zlib", "pygelf.handlers", PYGELF, pygelf_udp(True, 512), "udp", True,
         pygelf_fields),
    Case("pygelf-tcp", "pygelf.handlers", PYGELF, pygelf_tcp, "tcp", False, pygelf_fields),
    Case("graypy-udp-zlib", "graypy.handler", GRAYPY, graypy_udp, "udp", True, graypy_fields),
    Case("graypy-tcp", "graypy.handler", GRAYPY, graypy_tcp, "tcp", False, graypy_fields),
]


def udp_queue(port: int) -> tuple[int, int]:
    """(bytes waiting, datagrams dropped) of the UDP socket bound to 127.0.0.1:``port``, from
    /proc/net/udp (`tx_queue:rx_queue` is field 4, `drops` the last)."""
    address = int.from_bytes(socket.inet_aton("127.0.0.1"), sys.byteorder)
    local = f"{address:08X}:{port:04X}"
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local:
            return int(fields[4].split(":")[1], 16), int(fields[-1])
    raise AssertionError(f"no UDP socket bound to 127.0.0.1:{port} in /proc/net/udp")


class PacedSocket:
    """Stands in for a DatagramHandler's socket: sends each datagram on the real socket,
    remembers its GELF chunk header, and paces the sends (PACE_DATAGRAMS, PACE_QUEUE)."""

    def __init__(self, sock: socket.socket, port: int) -> None:
        self.sock = sock
        self.port = port
        self.chunks: Counter[bytes] = Counter()  # message id: chunks sent
        self.declared: dict[bytes, int] = {}  # message id: the chunk count in its headers
        self.whole = 0  # datagrams that are not chunks

    def sendto(self, data: bytes, address: tuple[str, int]) -> int:
        if data[:2] == b"\x1e\x0f":
            self.chunks[data[2:10]] += 1
            self.declared.setdefault(data[2:10], data[11])
        else:
            self.whole += 1
        if (self.whole + sum(self.chunks.values())) % PACE_DATAGRAMS == 0:
            wait_for(lambda: udp_queue(self.port)[0] < PACE_QUEUE, PACE_TIMEOUT, interval=0.001,
                     message=f"the relay's UDP queue below {PACE_QUEUE} bytes")
        return self.sock.sendto(data, address)

    def close(self) -> None:
        self.sock.close()


def raise_errors(handler: Any) -> None:
    """Makes the handler raise what it would only print (logging's handleError): a failed
    send, or the pacing's timeout, ends the test at once instead of losing one message."""
    def handle_error(record: logging.LogRecord) -> None:
        raise  # the exception the handler is handling when it calls handleError

    handler.handleError = handle_error


def record_documents(handler: Any) -> list[tuple[logging.LogRecord, bytes]]:
    """Wraps the handler's makePickle; the list fills with (record, bytes the library made)."""
    made: list[tuple[logging.LogRecord, bytes]] = []
    make = handler.makePickle

    def recording(record: logging.LogRecord) -> bytes:
        pickle: bytes = make(record)
        made.append((record, pickle))
        return pickle

    handler.makePickle = recording
    return made


def pace(handler: Any, port: int) -> list[PacedSocket]:
    """Wraps the socket the DatagramHandler makes; the list gets it once it exists."""
    made: list[PacedSocket] = []
    make = handler.makeSocket

    def paced() -> PacedSocket:
        made.append(PacedSocket(make(), port))
        return made[-1]

    handler.makeSocket = paced
    return made


def text_of(rng: random.Random, case: str, number: int) -> str:
    head = f"{case} {number:03d}/{COUNT} {rng.choice(WORDS)}"
    if number % LONG_EVERY:
        return head
    size, parts, length = rng.randint(*LONG_BYTES), [head], len(head.encode())
    while length < size:
        part = "".join(rng.choices(ALPHABET, k=64))
        parts.append(part)
        length += len(part.encode())
    return "".join(parts)


def document_of(case: Case, pickle: bytes) -> bytes:
    """The GELF document in what the library sent (framing and compression removed)."""
    if case.transport == "tcp":
        assert pickle.endswith(b"\x00"), f"{case.name}: no NUL after the document"
        return pickle[:-1]
    if case.compressed:
        assert pickle[:1] == b"\x78", f"{case.name}: not zlib: {pickle[:16]!r}"
        return zlib.decompress(pickle)
    return pickle


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_gelf_sender(gelf_relay: RelayUnderTest, case: Case) -> None:
    module = pytest.importorskip(case.module,
                                 reason=f"{case.module.split('.')[0]} is not installed: "
                                        f".venv/bin/pip install {case.pip}")
    handler = case.build(module, gelf_relay.port)
    raise_errors(handler)
    made = record_documents(handler)
    sockets = pace(handler, gelf_relay.port) if case.transport == "udp" else []
    logger = logging.Logger(f"interop-{case.name}")  # not registered: no other handlers
    logger.addHandler(handler)
    rng = random.Random(f"{case.name} {COUNT}")
    texts = [text_of(rng, case.name, number) for number in range(COUNT)]
    started = time.monotonic()
    try:
        for number, text in enumerate(texts):
            logger.log(LEVELS[number % len(LEVELS)], "%s", text,
                       extra={"request_id": number, "user": USER})
    finally:
        handler.close()
    sent = time.monotonic() - started

    assert len(made) == COUNT, f"{case.name} made {len(made)} documents of {COUNT}"
    documents = [document_of(case, pickle) for _, pickle in made]
    too_long = [len(document) for document in documents if len(document) > MAX_MESSAGE_SIZE]
    assert not too_long, f"documents over the relay's --max-message-size: {too_long}"
    chunks: list[int] = []
    if sockets:
        (paced,) = sockets
        chunks = sorted(paced.chunks.values())
        assert paced.whole + len(chunks) == COUNT, (
            f"{case.name} sent {paced.whole} whole datagrams and {len(chunks)} chunked "
            f"messages for {COUNT} documents")
        assert paced.chunks == Counter(paced.declared), (
            f"{case.name} sent a message with another number of chunks than its headers say")
        # The case must exercise chunking: short documents whole, long ones in many chunks.
        assert paced.whole > 0 and len(chunks) >= COUNT // LONG_EVERY and chunks[-1] >= 10, (
            f"{case.name}: {paced.whole} whole, chunks per chunked message {chunks}")
        dropped = udp_queue(gelf_relay.port)[1]
        assert dropped == 0, f"the kernel dropped {dropped} datagrams: the pacing failed"

    events = gelf_relay.finish(COUNT)
    expected = [document.decode("utf-8") for document in documents]
    try:
        timestamps = check_messages(gelf_relay, events, expected,
                                    ordered=case.transport == "tcp")
    except AssertionError as error:
        raise AssertionError(f"{error}{relay_log_tail(gelf_relay.relay)}") from None

    for number, ((record, _), message) in enumerate(zip(made, expected)):
        document = json.loads(message, parse_float=Decimal)
        meant = {"short_message": texts[number], "level": SYSLOG_LEVELS[record.levelno],
                 "timestamp": Decimal(repr(record.created)), "_request_id": number,
                 "_user": USER, **case.fields(record)}
        got = {key: document.get(key) for key in meant}
        assert got == meant, f"{case.name} message {number}: fields differ"
        assert timestamps[message] == math.floor(document["timestamp"] * 1000), (
            f"{case.name} message {number}: event timestamp {timestamps[message]} is not the "
            f"document's {document['timestamp']} in milliseconds")
    longest = max(len(document) for document in documents)
    print(f"{case.name}: {COUNT} documents ({longest} bytes at most) sent in {sent:.2f} s; "
          f"chunks per chunked message: {Counter(chunks) if chunks else 'none'}")
