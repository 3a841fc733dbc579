"""GELF 1.1 UDP payloads: plain, zlib or gzip, with a cap on the output."""

from typing import Literal

Buffer = bytes | bytearray | memoryview
Status = Literal["ok", "truncated", "corrupt"]

def decode_payload(payload: Buffer, max_size: int) -> tuple[bytes | None, Status]: ...
