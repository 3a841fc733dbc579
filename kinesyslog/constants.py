"""The limits and fixed values that several modules share or that the contract names
(docs/contract.md). A value that one module alone uses is named at the top of that module."""

# Firehose service limits (PutRecordBatch).
FIREHOSE_MAX_RECORD_BYTES = 1_024_000
FIREHOSE_MAX_BATCH_RECORDS = 500
FIREHOSE_MAX_BATCH_BYTES = 4 * 1024 * 1024

# Kinesis Data Streams service limits (PutRecords). A record's size counts its data and its
# partition key (UTF-8); a partition key is 1 to 256 characters.
KINESIS_MAX_RECORD_BYTES = 1024 * 1024
KINESIS_MAX_BATCH_RECORDS = 500
KINESIS_MAX_BATCH_BYTES = 5 * 1024 * 1024
KINESIS_MAX_PARTITION_KEY_CHARS = 256
KINESIS_FORMATS = ("cwl", "kpl")  # --kinesis-format (kinesis.py)
PARTITION_KEY_MODES = ("source", "group", "random")  # --partition-key (kinesis.py)

# Input limits.
DEFAULT_MAX_MESSAGE_SIZE = 65_536
MAX_MAX_MESSAGE_SIZE = 900 * 1024
MIN_MAX_MESSAGE_SIZE = 1024
TCP_RECV_SIZE = 256 * 1024
UDP_RECV_SIZE = 65_535
# The listener's loop pauses this long after a round of reads that left nothing behind
# (eventloop.EventLoop nap): a wake-up per batch of datagrams, not per datagram.
LISTENER_NAP = 0.0002
MAX_SOURCE_LENGTH = 255  # bytes of source-address text stored per ring entry
DEFAULT_TLS_PORT = 6514
DEFAULT_MAX_CONNECTIONS = 4096
# One sender address may hold this many connections (0: no limit); behind --proxy-protocol
# the address in the header counts, not the load balancer's.
DEFAULT_MAX_CONNECTIONS_PER_SOURCE = 256
# A connection that sent nothing for this long is closed (0: never). Long, for senders that
# log rarely: rsyslog and syslog-ng notice the close and reconnect before their next message.
DEFAULT_IDLE_TIMEOUT = 3600.0
# When every --max-connections slot is taken, the connection idle longest gives way to a new
# one, if it has been idle at least this long.
IDLE_RECLAIM_AFTER = 60.0
IDLE_CHECK_INTERVAL = 1.0
# Unfinished messages (a line without its LF yet, an octet-counted frame still arriving) of
# all connections together may hold this much memory; beyond it, the connections holding the
# most are closed. 4096 connections could otherwise pin --max-message-size each.
PARTIAL_MESSAGE_BUDGET = 32 * 1024 * 1024
# TLS handshakes in progress at once (PROXY header included); each holds about 45 KB of
# OpenSSL state once the ClientHello is in. Real senders finish in milliseconds.
MAX_TLS_HANDSHAKES = 256
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
RING_MIN_CAPACITY = 16 * 1024 * 1024
RING_FLUSH_MULTIPLE = 4

# Spool.
DEFAULT_SPOOL_MAX_SIZE = 1024**3
SPOOL_RESUME_FRACTION = 0.9
SPOOL_RECORD_PREFIX = "record-"
SPOOL_RECORD_SUFFIX = ".gz"
SPOOL_KINESIS_SUFFIX = ".kds"  # a Kinesis Data Streams record with its partition key
SPOOL_TEMP_PREFIX = ".tmp-"
SPOOL_LEGACY_PREFIX = "firehose_event-"
SPOOL_LEGACY_TEMP_PREFIX = "_temp_firehose_event-"  # 2.0.1's temporary files
SPOOL_CORRUPT_DIR = "corrupt"
OWNER_CACHE_FILE = "owner"  # the last AWS account id read, for starts without STS

# Upload retries: capped exponential back-off with full jitter. The cap bounds the time from
# Firehose's recovery to the next attempt (delivery resumes within 10 s); while every call
# fails, attempts carry one record, so the cap costs Firehose almost nothing.
RETRY_BASE_DELAY = 0.5
RETRY_MAX_DELAY = 5.0
RETRY_PERMANENT_DELAY = 30.0  # access denied, unknown stream: retrying cannot fix those soon
QUARANTINE_RETRY_DELAY = 30.0  # a spool file that could not be moved to corrupt/
# A call that hangs holds delivery at most connect + read timeout (Firehose answers a 4 MiB
# PutRecordBatch well within a second).
FIREHOSE_CONNECT_TIMEOUT = 3.0
FIREHOSE_READ_TIMEOUT = 10.0
STARTUP_CHECK_TIMEOUT = 10.0
UPLOADER_RESCAN_INTERVAL = 1.0  # longest wait before the uploader looks at the spool again

# A gzip member: ID1 ID2 CM=deflate, and its smallest size (10-byte header, 8-byte trailer).
GZIP_MAGIC = b"\x1f\x8b\x08"
GZIP_MIN_MEMBER_BYTES = 18

# Life cycle.
DEFAULT_SHUTDOWN_TIMEOUT = 30.0
WORKER_FLUSH_GRACE = 30.0  # after --shutdown-timeout, for the final flush of a busy worker
UPLOADER_EXIT_GRACE = 10.0
EX_CONFIG = 78
EX_SOFTWARE = 70  # a process failed unexpectedly (sysexits.h)
EX_CANTCREAT = 73  # the ring file cannot be created in --spool-dir
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

# `kinesyslog install`: the systemd unit and where its relay spools.
SYSTEMD_UNIT_NAME = "kinesyslog.service"
DEFAULT_SYSTEMD_DIR = "/etc/systemd/system"
SYSTEM_SPOOL_DIR = "/var/spool/kinesyslog"
# systemd's TimeoutStopSec is the shutdown timeout plus this: the relay may spend the shutdown
# timeout uploading, then up to 30 s more (WORKER_FLUSH_GRACE) on a busy worker's flush.
SYSTEMD_STOP_MARGIN = 60
SYSTEMD_NOFILE_LIMIT = 65_536  # above DEFAULT_MAX_CONNECTIONS; systemd's default soft limit is 1024

# `kinesyslog dump`: compressed bytes fed to the decompressor at a time, which bounds the
# copy made of the rest of an object after each gzip member.
DUMP_CHUNK_SIZE = 64 * 1024
DUMP_MAX_KINESIS_RECORDS = 10_000  # Kinesis records read from one stream (--max-records)
DUMP_KINESIS_TIMEOUT = 30.0  # seconds spent reading one stream (--timeout)

# GELF 1.1 input (docs/contract.md §4.5, §4.6). A chunk is magic(2) id(8) sequence(1)
# count(1) payload.
GELF_CHUNK_MAGIC = b"\x1e\x0f"
GELF_CHUNK_HEADER_LENGTH = 12
GELF_MAX_CHUNKS = 128
GELF_CHUNK_TIMEOUT = 5.0  # seconds after its first chunk that an incomplete message is dropped
# A reassembled (possibly compressed) payload may reach 2 * --max-message-size: deflate never
# expands data by more than a few bytes per 16 KiB, so a payload above that would be cut
# anyway, and the margin keeps slightly oversized messages deliverable (truncated). It is at
# least 128 chunks of 8192 bytes, the largest message standard GELF clients send (their LAN
# chunk size is 8154), so no standard client's message is ever refused for its size.
GELF_STANDARD_CHUNK_SIZE = 8192
# Pending chunks are bounded in bytes and in messages; beyond either, the oldest pending
# messages are evicted. A message completes within milliseconds of its first chunk unless a
# chunk was lost, so what stays pending is mostly lost messages waiting out their 5 s: evicting
# the oldest costs nothing in practice. 32 MiB holds 4096 pending 8 KiB chunks, or 17 messages
# of the largest size (2 * 900 KiB); 8192 messages absorb 1600 incomplete messages a second
# for the whole timeout while keeping a flood of tiny never-completing ids under ~10 MiB.
GELF_MAX_PENDING_BYTES = 32 * 1024 * 1024
GELF_MAX_PENDING_MESSAGES = 8192
# GELF timestamps after the last millisecond of year 9999 are absurd: the receive time is used.
GELF_MAX_TIMESTAMP_MS = 253_402_300_799_999
# JSON nesting accepted by the structural check (GELF documents are flat; Python's json
# gives up near 1000 levels).
GELF_MAX_JSON_DEPTH = 512
