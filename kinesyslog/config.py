"""The relay's configuration: one frozen dataclass and every validation with its message."""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
import zoneinfo
from dataclasses import dataclass
from pathlib import Path

from kinesyslog import constants

ROLE_ARN = re.compile(r"^arn:aws[a-zA-Z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
KINESIS_STREAM_NAME = re.compile(r"^[a-zA-Z0-9_.-]{1,128}$")
# The longest log group is the prefix + "/syslog/65535".
LONGEST_GROUP_SUFFIX = len("/syslog/65535")


class ConfigError(Exception):
    """A configuration problem: one line naming the option and the fix (exit 78)."""


@dataclass(frozen=True)
class Config:
    stream: str | None
    address: str = "0.0.0.0"
    udp_ports: tuple[int, ...] = ()
    tcp_ports: tuple[int, ...] = ()
    tls_ports: tuple[int, ...] = ()
    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None
    proxy_protocol_ports: tuple[int, ...] = ()
    spool_dir: Path = Path(tempfile.gettempdir())
    region: str | None = None
    profile: str | None = None
    role_arn: str | None = None
    role_session_name: str | None = None
    external_id: str | None = None
    gelf: bool = False
    group_prefix: str = constants.DEFAULT_GROUP_PREFIX
    prometheus_ports: tuple[int, ...] = ()
    debug: bool = False
    output_dir: Path | None = None
    kinesis_stream: str | None = None
    kinesis_format: str = "cwl"
    kinesis_compress: bool = False
    partition_key: str = "source"
    endpoint_url: str | None = None
    max_message_size: int = constants.DEFAULT_MAX_MESSAGE_SIZE
    flush_size: int = constants.DEFAULT_FLUSH_SIZE
    flush_interval: float = constants.DEFAULT_FLUSH_INTERVAL
    spool_max_size: int = constants.DEFAULT_SPOOL_MAX_SIZE
    shutdown_timeout: float = constants.DEFAULT_SHUTDOWN_TIMEOUT
    rfc3164_timezone: str = "UTC"
    max_connections: int = constants.DEFAULT_MAX_CONNECTIONS
    max_connections_per_source: int = constants.DEFAULT_MAX_CONNECTIONS_PER_SOURCE
    idle_timeout: float = constants.DEFAULT_IDLE_TIMEOUT

    @property
    def ring_capacity(self) -> int:
        wanted = constants.RING_FLUSH_MULTIPLE * self.flush_size + 2 * self.max_message_size
        capacity = max(constants.RING_MIN_CAPACITY, wanted)
        return -(-capacity // 4096) * 4096

    @property
    def ring_path(self) -> Path:
        return self.spool_dir / constants.RING_FILE_NAME

    @property
    def message_format(self) -> str:
        return "gelf" if self.gelf else "syslog"

    @property
    def destination(self) -> str:
        """Where records go: "kinesis", "directory" or "firehose" (a metric label)."""
        if self.kinesis_stream:
            return "kinesis"
        return "directory" if self.output_dir is not None else "firehose"


def _ports(option: str, values: tuple[int, ...]) -> tuple[int, ...]:
    """Validated ports with 0 (disabled) and repeats removed, order kept."""
    for port in values:
        if not 0 <= port <= 65535:
            raise ConfigError(f"{option} {port}: not a port number; use 1-65535, or 0 to disable")
    return tuple(dict.fromkeys(port for port in values if port))


def _writable_dir(option: str, path: Path) -> Path:
    try:
        path.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"{option} {path}: cannot create it ({error.strerror}); "
                          "choose a writable directory") from None
    if not path.is_dir():
        raise ConfigError(f"{option} {path}: not a directory; choose a writable directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: not writable by this user; "
                          "fix its permissions or choose another directory")
    return path


def _readable_file(option: str, path: Path | None) -> Path | None:
    if path is not None and not os.access(path, os.R_OK):
        raise ConfigError(f"{option} {path}: cannot read this file; check the path and permissions")
    return path


def _between(option: str, value: float, low: float, high: float, unit: str = "") -> None:
    if not low <= value <= high:
        raise ConfigError(f"{option} {value:g}: out of range; "
                          f"use a value from {low:g} to {high:g}{unit}")


def _check_destination(config: Config) -> None:
    """Exactly one of --stream, --kinesis-stream and --output-dir, and the Kinesis options
    only with --kinesis-stream."""
    if config.kinesis_stream is not None:
        if config.stream:
            raise ConfigError("--kinesis-stream: exclusive with --stream; give one destination "
                              "(Kinesis Data Streams or Firehose)")
        if config.output_dir is not None:
            raise ConfigError("--kinesis-stream: exclusive with --output-dir; give one "
                              "destination")
        if not KINESIS_STREAM_NAME.match(config.kinesis_stream):
            raise ConfigError(f"--kinesis-stream {config.kinesis_stream!r}: not a stream name; "
                              "use 1-128 letters, digits, '_', '-' or '.'")
        if config.kinesis_compress and config.kinesis_format != "kpl":
            raise ConfigError("--kinesis-compress: gzips KPL user records, and cwl records are "
                              "gzipped already; add --kinesis-format kpl or remove it")
        longest_prefix = constants.KINESIS_MAX_PARTITION_KEY_CHARS - LONGEST_GROUP_SUFFIX
        if config.partition_key == "group" and len(config.group_prefix) > longest_prefix:
            raise ConfigError(f"--group-prefix: {len(config.group_prefix)} characters make log "
                              "groups too long for a Kinesis partition key; use at most "
                              f"{longest_prefix} characters, or another --partition-key")
        return
    if config.kinesis_format != "cwl" or config.kinesis_compress or \
            config.partition_key != "source":
        raise ConfigError("--kinesis-format/--kinesis-compress/--partition-key: only used with "
                          "--kinesis-stream; give --kinesis-stream or remove them")
    if config.output_dir is None and not config.stream:
        raise ConfigError("--stream: missing; name the Firehose delivery stream "
                          "(or KINESYSLOG_STREAM), or a Kinesis data stream with "
                          "--kinesis-stream, or write records locally with --output-dir")


def validate(config: Config, *, tls_port_explicit: bool) -> Config:
    """Checks every option, creates the directories; returns the normalized Config."""
    udp = _ports("--udp-port", config.udp_ports)
    tcp = _ports("--tcp-port", config.tcp_ports)
    tls = _ports("--tls-port", config.tls_ports)
    proxy = _ports("--proxy-protocol", config.proxy_protocol_ports)
    prometheus = _ports("--prometheus-port", config.prometheus_ports)

    try:
        ipaddress.ip_address(config.address)
    except ValueError:
        raise ConfigError(f"--address {config.address!r}: not an IP address; "
                          "use e.g. 0.0.0.0, 127.0.0.1 or :: (IPv6 and IPv4)") from None

    _check_destination(config)

    has_tls_material = config.cert is not None or config.key is not None
    if tls and not has_tls_material and tls_port_explicit:
        raise ConfigError(f"--tls-port {tls[0]}: TLS needs a certificate; "
                          "give --cert and --key, or --tls-port 0 to disable TLS")
    if has_tls_material and (config.cert is None or config.key is None):
        missing = "--key" if config.key is None else "--cert"
        raise ConfigError(f"{missing}: missing; TLS needs both --cert and --key")
    if not has_tls_material:
        tls = ()
    clash = sorted(set(tls) & set(tcp))
    if clash:
        raise ConfigError(f"--tls-port {clash[0]}: also given as --tcp-port; use different ports")
    for port in proxy:
        if port not in tcp and port not in tls:
            raise ConfigError(f"--proxy-protocol {port}: not a --tcp-port or --tls-port; "
                              "name one of the TCP or TLS listener ports")
    if config.client_ca is not None and not tls:
        raise ConfigError("--client-ca: needs a TLS listener; give --cert, --key "
                          "(and --tls-port), or remove --client-ca")
    if config.role_arn is not None and not ROLE_ARN.match(config.role_arn):
        raise ConfigError(f"--role-arn {config.role_arn!r}: not an IAM role ARN; use "
                          "arn:aws:iam::ACCOUNT:role/NAME")
    if (config.role_session_name or config.external_id) and not config.role_arn:
        raise ConfigError("--role-session-name/--external-id: only used with --role-arn; "
                          "give --role-arn or remove them")
    if config.role_arn and config.output_dir is not None:
        raise ConfigError("--role-arn: --output-dir makes no AWS call; remove one of them")

    if not (udp or tcp or tls):
        raise ConfigError("no listener: give at least one of --udp-port, --tcp-port "
                          "(or their KINESYSLOG_* variables)")

    _between("--max-message-size", config.max_message_size, constants.MIN_MAX_MESSAGE_SIZE,
             constants.MAX_MAX_MESSAGE_SIZE, " bytes")
    _between("--flush-size", config.flush_size, constants.MIN_FLUSH_SIZE,
             constants.MAX_FLUSH_SIZE, " bytes")
    _between("--flush-interval", config.flush_interval, 0.1, 3600, " seconds")
    _between("--spool-max-size", config.spool_max_size, 1024 * 1024, 2**50, " bytes")
    _between("--shutdown-timeout", config.shutdown_timeout, 0, 3600, " seconds")
    try:
        zoneinfo.ZoneInfo(config.rfc3164_timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"--rfc3164-timezone {config.rfc3164_timezone!r}: unknown time zone; "
                          "use an IANA name such as UTC or Europe/Berlin") from None
    if not config.group_prefix.startswith("/") or config.group_prefix.endswith("/"):
        raise ConfigError(f"--group-prefix {config.group_prefix!r}: must start with '/' "
                          "and not end with '/', e.g. /kinesyslog")

    spool_dir = _writable_dir("--spool-dir", config.spool_dir.absolute())
    output_dir = None
    if config.output_dir is not None:
        output_dir = _writable_dir("--output-dir", config.output_dir.absolute())
        if output_dir == spool_dir:
            raise ConfigError(f"--output-dir {output_dir}: must differ from --spool-dir")
    _readable_file("--cert", config.cert)
    _readable_file("--key", config.key)
    _readable_file("--client-ca", config.client_ca)
    _between("--max-connections", config.max_connections, 1, 1_000_000)
    _between("--max-connections-per-source", config.max_connections_per_source, 0, 1_000_000)
    _between("--idle-timeout", config.idle_timeout, 0, 7 * 86_400, " seconds (0: never)")

    return Config(**{
        **config.__dict__,
        "udp_ports": udp, "tcp_ports": tcp, "tls_ports": tls, "proxy_protocol_ports": proxy,
        "prometheus_ports": prometheus, "spool_dir": spool_dir, "output_dir": output_dir,
    })
