"""Every limit and fixed value of the relay, in one place."""

# Firehose service limits (PutRecordBatch).
FIREHOSE_MAX_RECORD_BYTES = 1_024_000
FIREHOSE_MAX_BATCH_RECORDS = 500
FIREHOSE_MAX_BATCH_BYTES = 4 * 1024 * 1024

# Input limits.
DEFAULT_MAX_MESSAGE_SIZE = 65_536
MAX_MAX_MESSAGE_SIZE = 900 * 1024
MIN_MAX_MESSAGE_SIZE = 1024
TCP_RECV_SIZE = 256 * 1024
UDP_RECV_SIZE = 65_535
MAX_SOURCE_LENGTH = 255  # bytes of source-address text stored per ring entry
DEFAULT_TLS_PORT = 6514
DEFAULT_MAX_CONNECTIONS = 4096
NEGOTIATION_TIMEOUT = 10.0  # seconds for a PROXY header and TLS handshake to complete

# Worker buffers (2.0.1's constants are the defaults).
DEFAULT_FLUSH_SIZE = 4 * 1024 * 1024
DEFAULT_FLUSH_INTERVAL = 60.0
MIN_FLUSH_SIZE = 64 * 1024
MAX_FLUSH_SIZE = 16 * 1024 * 1024
GZIP_LEVEL = 1  # ISA-L level 1: about zlib level 6's ratio at ten times its speed

# The ring between listener and worker. It must hold a whole flush of uncommitted
# events plus room to keep receiving while the worker spools them.
RING_FILE_NAME = "ring.mmap"
RING_MIN_CAPACITY = 32 * 1024 * 1024
RING_FLUSH_MULTIPLE = 4

# Spool.
DEFAULT_SPOOL_MAX_SIZE = 1024**3
SPOOL_RESUME_FRACTION = 0.9
SPOOL_RECORD_PREFIX = "record-"
SPOOL_RECORD_SUFFIX = ".gz"
SPOOL_TEMP_PREFIX = ".tmp-"
SPOOL_LEGACY_PREFIX = "firehose_event-"
SPOOL_LEGACY_TEMP_PREFIX = "_temp_firehose_event-"  # 2.0.1's temporary files
SPOOL_CORRUPT_DIR = "corrupt"
OWNER_CACHE_FILE = "owner"  # the last AWS account id read, for starts without STS

# Upload retries: capped exponential back-off with full jitter.
RETRY_BASE_DELAY = 0.5
RETRY_MAX_DELAY = 30.0
FIREHOSE_CONNECT_TIMEOUT = 5.0
FIREHOSE_READ_TIMEOUT = 30.0
STARTUP_CHECK_TIMEOUT = 10.0
UPLOADER_RESCAN_INTERVAL = 1.0  # longest wait before the uploader looks at the spool again

# A gzip member: ID1 ID2 CM=deflate, and its smallest size (10-byte header, 8-byte trailer).
GZIP_MAGIC = b"\x1f\x8b\x08"
GZIP_MIN_MEMBER_BYTES = 18

# Life cycle.
DEFAULT_SHUTDOWN_TIMEOUT = 30.0
EX_CONFIG = 78
OUTPUT_DIR_OWNER = "000000000000"

# Event ids: 56 decimal digits, as CloudWatch Logs writes them.
EVENT_ID_DIGITS = 56

# Record fields.
MESSAGE_TYPE = "DATA_MESSAGE"
DEFAULT_GROUP_PREFIX = "/kinesyslog"

# Ring entry kinds: the message format and transport, stored with each entry.
KIND_SYSLOG = 0
KIND_GELF = 1

# Timestamps: an RFC 3164 time (no year) is put in the latest year that does not place it
# more than this far after the receive time. Zone offsets are cached per hour, this many.
RFC3164_MAX_FUTURE_MS = 2 * 86_400 * 1000
TIMEZONE_CACHE_SIZE = 4096

# PROXY protocol headers. A v1 line is at most 107 bytes with its CRLF (proxy-protocol.txt
# §2.1). A v2 header may declare up to 16 + 65535 bytes; real ones are far smaller (AWS NLB
# sends under 300 bytes: 16 + 36 address bytes + a VPC-endpoint TLV; HAProxy's largest, with
# UNIX addresses and every SSL, authority, ALPN and unique-id TLV, stays near 1 KiB).
# 16 + 4096 admits all of them with room to spare while bounding what one connection may
# make the listener buffer before its header is judged.
PROXY_V1_MAX_LENGTH = 107
PROXY_V2_MAX_LENGTH = 16 + 4096
