"""Syslog message framing, the reference: RFC 6587 for TCP and TLS, RFC 5426 for UDP.

The public API of kinesyslog/_fast/framing.pyi (StreamFramer, frame_datagram), written from
docs/contract.md §4.1 and §4.2 for clarity, not speed. frame_stream() states the same rules
once more over a whole stream, to check the streaming framers against.

RFC 6587 §3.4.1, octet counting (and RFC 5425 §4.3 for TLS), MSG-LEN limited to 9 digits:

    SYSLOG-FRAME  = MSG-LEN SP SYSLOG-MSG
    MSG-LEN       = NONZERO-DIGIT *DIGIT
    NONZERO-DIGIT = %d49-57

RFC 6587 §3.4.2, non-transparent framing, with LF or NUL as the trailer:

    SYSLOG-FRAME = SYSLOG-MSG TRAILER
    TRAILER      = LF / APP-DEFINED

RFC 5426 §3.1: "Each syslog UDP datagram MUST contain only one syslog message, which MAY be
complete or truncated."
"""

from __future__ import annotations

import enum
import re
from typing import Union

Buffer = Union[bytes, bytearray, memoryview]

LF = 0x0A
CR = 0x0D
NUL = 0x00
MAX_MSG_LEN_DIGITS = 9
# At most this many bytes beyond --max-message-size are held between two feeds
# (docs/contract.md §4.2: "--max-message-size + 16 bytes of an unfinished message").
BUFFER_SLACK = 16

# A frame that starts like this is octet-counted; anything else is non-transparent.
MSG_LEN_SP = re.compile(rb"[1-9][0-9]{0,%d} " % (MAX_MSG_LEN_DIGITS - 1))
# Bytes that may still grow into MSG-LEN SP.
MSG_LEN_SO_FAR = re.compile(rb"[1-9][0-9]{0,%d}" % (MAX_MSG_LEN_DIGITS - 1))


def as_bytes(data: Buffer) -> bytes:
    """The bytes of any buffer (bytes, bytearray, memoryview); TypeError for anything else."""
    if isinstance(data, bytes):
        return data
    return memoryview(data).tobytes()


def counted_message(content: bytes) -> bytes:
    """The message of an octet-counted frame whose MSG-LEN bytes are `content`.

    docs/contract.md §4.2: one trailing LF or CR LF inside the counted bytes is not part of
    the message. This is the one place that says so, for both StreamFramer and
    frame_stream()."""
    if content.endswith(b"\r\n"):
        return content[:-2]
    if content.endswith(b"\n"):
        return content[:-1]
    return content


def counted_early_cut(msg_len: int, max_message_size: int) -> bool:
    """Whether a counted frame is too long whatever it ends with: it is delivered cut as soon
    as max_message_size bytes arrived. Up to two bytes over, it is held whole, as its
    trailing CR LF may bring it within the limit."""
    return msg_len > max_message_size + 2


def line_message(content: bytes, ended_by: int | None) -> bytes:
    """The message of a non-transparent frame: `content` up to its trailer, which is LF, NUL
    or None (the end of the stream). A CR right before an LF or the end of the stream is
    removed; a CR before a NUL is kept (docs/contract.md §4.2)."""
    if ended_by != NUL and content.endswith(b"\r"):
        return content[:-1]
    return content


def first_trailer(data: bytes, start: int) -> int:
    """Index of the first LF or NUL in data[start:], or -1."""
    ends = [k for k in (data.find(b"\n", start), data.find(b"\0", start)) if k >= 0]
    return min(ends, default=-1)


class _Mode(enum.Enum):
    FRAME_START = "between frames; held: the MSG-LEN digits read so far"
    COUNTED = "in an octet-counted frame; held: its message bytes read so far"
    LINE = "in a non-transparent frame; held: its bytes read so far"
    SKIP_COUNTED = "the counted frame's message was delivered cut: skip the rest of the frame"
    SKIP_LINE = "the line was delivered cut: skip up to the next LF or NUL"


class Framer:
    """What both stream framers share (as kinesyslog/_fast/framing.pyx's _Framer): the size
    limit, the held bytes of the unfinished frame and the counters."""

    def __init__(self, max_message_size: int) -> None:
        if max_message_size < 1:
            raise ValueError("max_message_size must be at least 1")
        self._max = max_message_size
        self._truncated = 0
        self._incomplete_dropped = 0
        self._held = bytearray()

    @property
    def truncated(self) -> int:
        return self._truncated

    @property
    def incomplete_dropped(self) -> int:
        return self._incomplete_dropped

    @property
    def buffered(self) -> int:
        return len(self._held)


class StreamFramer(Framer):
    """RFC 6587 framing of one TCP or TLS connection, detected at the start of every frame.

    feed() takes whatever the socket returned and gives back the complete messages; close()
    ends the stream. A message longer than max_message_size is delivered cut to that size as
    soon as that is known (counted in `truncated`) and the rest of its frame is skipped. At
    close, an unterminated non-transparent message (or MSG-LEN digits never followed by SP)
    is delivered; an incomplete octet-counted message is dropped and counted in
    `incomplete_dropped`. `buffered` is how many bytes of the unfinished frame are held."""

    def __init__(self, max_message_size: int) -> None:
        super().__init__(max_message_size)
        self._reset()

    def _reset(self) -> None:
        self._mode = _Mode.FRAME_START
        self._held = bytearray()
        self._frame_left = 0  # COUNTED, SKIP_COUNTED: bytes of the frame not read yet
        self._message_length = 0  # COUNTED: MSG-LEN, or max_message_size when cut early

    def feed(self, data: Buffer) -> list[bytes]:
        stream = as_bytes(data)
        out: list[bytes] = []
        steps = {
            _Mode.FRAME_START: self._frame_start,
            _Mode.COUNTED: self._counted,
            _Mode.LINE: self._line,
            _Mode.SKIP_COUNTED: self._skip_counted,
            _Mode.SKIP_LINE: self._skip_line,
        }
        position = 0
        while position < len(stream):
            position = steps[self._mode](stream, position, out)
        return out

    def close(self) -> list[bytes]:
        out: list[bytes] = []
        if self._mode in (_Mode.FRAME_START, _Mode.LINE):
            self._deliver(line_message(bytes(self._held), None), out)
        elif self._mode is _Mode.COUNTED:
            self._incomplete_dropped += 1
        self._reset()
        return out

    def _deliver(self, message: bytes, out: list[bytes], cut: bool = False) -> None:
        """Deliver a non-empty message, cut to max_message_size (counted if it had to be, or
        if `cut` says its frame was longer)."""
        if len(message) > self._max:
            message = message[: self._max]
            cut = True
        if cut:
            self._truncated += 1
        if message:
            out.append(message)

    def _frame_start(self, stream: bytes, position: int, out: list[bytes]) -> int:
        held = len(self._held)
        head = bytes(self._held) + stream[position : position + MAX_MSG_LEN_DIGITS + 1]
        prefix = MSG_LEN_SP.match(head)
        if prefix:
            msg_len = int(head[: prefix.end() - 1])
            self._held.clear()
            self._mode = _Mode.COUNTED
            self._frame_left = msg_len
            self._message_length = (self._max if counted_early_cut(msg_len, self._max)
                                    else msg_len)
            return position + prefix.end() - held
        if MSG_LEN_SO_FAR.fullmatch(head) and position + len(head) - held == len(stream):
            self._held[:] = head  # only digits, up to the end of what arrived: wait
            return len(stream)
        self._mode = _Mode.LINE  # the digits held, if any, start the message
        return position

    def _counted(self, stream: bytes, position: int, out: list[bytes]) -> int:
        missing = self._message_length - len(self._held)
        if len(stream) - position < missing:
            self._held += stream[position:]
            self._frame_left -= len(stream) - position
            return len(stream)
        content = bytes(self._held) + stream[position : position + missing]
        self._held.clear()
        self._frame_left -= missing
        if self._frame_left:  # MSG-LEN is more than max_message_size
            self._deliver(content, out, cut=True)
        else:
            self._deliver(counted_message(content), out)
        self._mode = _Mode.SKIP_COUNTED if self._frame_left else _Mode.FRAME_START
        return position + missing

    def _skip_counted(self, stream: bytes, position: int, out: list[bytes]) -> int:
        skipped = min(self._frame_left, len(stream) - position)
        self._frame_left -= skipped
        if not self._frame_left:
            self._mode = _Mode.FRAME_START
        return position + skipped

    def _line(self, stream: bytes, position: int, out: list[bytes]) -> int:
        end = first_trailer(stream, position)
        if end >= 0:
            content = bytes(self._held) + stream[position:end]
            self._held.clear()
            self._mode = _Mode.FRAME_START
            self._deliver(line_message(content, stream[end]), out)
            return end + 1
        total = len(self._held) + len(stream) - position
        # One byte over the limit may be the CR of a CR LF, which the LF would remove.
        if total <= self._max or (total == self._max + 1 and stream[-1] == CR):
            self._held += stream[position:]
            return len(stream)
        content = bytes(self._held) + stream[position : position + self._max]
        self._held.clear()
        self._mode = _Mode.SKIP_LINE
        self._deliver(content, out, cut=True)
        return len(stream)

    def _skip_line(self, stream: bytes, position: int, out: list[bytes]) -> int:
        end = first_trailer(stream, position)
        if end < 0:
            return len(stream)
        self._mode = _Mode.FRAME_START
        return end + 1


def frame_datagram(data: Buffer, max_message_size: int) -> tuple[bytes, bool]:
    """(message, truncated) of one UDP datagram (docs/contract.md §4.1): one trailing CR LF,
    LF or NUL removed, then cut to max_message_size."""
    if max_message_size < 1:
        raise ValueError("max_message_size must be at least 1")
    message = as_bytes(data)
    for trailer in (b"\r\n", b"\n", b"\0"):
        if message.endswith(trailer):
            message = message[: -len(trailer)]
            break
    return message[:max_message_size], len(message) > max_message_size


def frame_stream(stream: bytes, max_message_size: int) -> tuple[list[bytes], int, int]:
    """docs/contract.md §4.2 over a whole stream and its close, stated without a state
    machine: (messages, truncated, incomplete_dropped), what a StreamFramer fed the stream
    in any pieces and then closed must give."""
    messages: list[bytes] = []
    truncated = dropped = 0
    i = 0
    while i < len(stream):
        prefix = MSG_LEN_SP.match(stream, i, i + MAX_MSG_LEN_DIGITS + 1)
        if prefix:
            msg_len = int(prefix.group()[:-1])
            start = prefix.end()
            content = stream[start : start + msg_len]
            early = counted_early_cut(msg_len, max_message_size)
            if len(content) < msg_len and not (early and len(content) >= max_message_size):
                dropped += 1  # incomplete, and not delivered cut before the stream ended
                break
            i = start + msg_len
            message = content if early else counted_message(content)
            cut = early or len(message) > max_message_size
        else:
            end = first_trailer(stream, i)
            if end < 0:
                end = len(stream)
            message = line_message(stream[i:end], stream[end] if end < len(stream) else None)
            i = end + 1
            cut = len(message) > max_message_size
        if cut:
            message = message[:max_message_size]
            truncated += 1
        if message:
            messages.append(message)
    return messages, truncated, dropped
