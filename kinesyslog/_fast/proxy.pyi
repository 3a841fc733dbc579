"""The PROXY protocol, versions 1 and 2 (HAProxy's proxy-protocol.txt), sans-IO."""


Buffer = bytes | bytearray | memoryview

# The names ProxyHeader uses for commands, families and transports.
PROXY: str
LOCAL: str
TCP4: str
TCP6: str
UNIX: str
UNKNOWN: str
UNSPEC: str
STREAM: str
DGRAM: str

class ProxyError(ValueError): ...

class ProxyHeader:
    @property
    def version(self) -> int: ...
    @property
    def command(self) -> str: ...  # "PROXY" or "LOCAL"
    @property
    def family(self) -> str: ...  # "TCP4", "TCP6", "UNIX" or "UNKNOWN"
    @property
    def transport(self) -> str: ...  # "STREAM", "DGRAM" or "UNSPEC"
    @property
    def source_address(self) -> str | None: ...
    @property
    def source_port(self) -> int | None: ...
    @property
    def destination_address(self) -> str | None: ...
    @property
    def destination_port(self) -> int | None: ...
    @property
    def uses_peer(self) -> bool: ...
    def __init__(
        self,
        version: int,
        command: str,
        family: str,
        transport: str,
        source_address: str | None = None,
        source_port: int | None = None,
        destination_address: str | None = None,
        destination_port: int | None = None,
    ) -> None: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

def decode(data: Buffer) -> tuple[ProxyHeader | None, int]: ...
def crc32c(data: Buffer) -> int: ...
def address_text(host: str) -> str: ...
