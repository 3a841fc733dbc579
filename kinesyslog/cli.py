"""Command line: turns options and KINESYSLOG_* variables into a Config, nothing else."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from kinesyslog import __version__, constants
from kinesyslog.config import Config, ConfigError, validate


def _env(name: str) -> str:
    return f"KINESYSLOG_{name.upper().replace('-', '_')}"


def option(name: str, **kwargs: Any) -> Any:
    """A listen option whose environment variable is KINESYSLOG_<NAME> (2.0.1's convention)."""
    kwargs.setdefault("show_default", True)
    return click.option(f"--{name}", envvar=_env(name), show_envvar=True, **kwargs)


PORTS = {"type": int, "multiple": True, "metavar": "PORT"}


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="kinesyslog")
def cli() -> None:
    """Syslog and GELF relay to Amazon Kinesis Data Firehose or Kinesis Data Streams."""


@cli.command()
@option("stream", help="Firehose delivery stream name (required unless --output-dir).")
@option("address", default="0.0.0.0", help="Bind address; :: listens on IPv6 and IPv4.")
@option("udp-port", default=(), help="UDP listener port; 0 to disable. May be repeated.", **PORTS)
@option("tcp-port", default=(), help="TCP listener port; 0 to disable. May be repeated.", **PORTS)
@option("tls-port", default=(constants.DEFAULT_TLS_PORT,), help="TLS listener port (needs "
        "--cert and --key); 0 to disable. May be repeated.", **PORTS)
@option("cert", type=click.Path(dir_okay=False, path_type=Path),
        help="PEM certificate chain for TLS listeners.")
@option("key", type=click.Path(dir_okay=False, path_type=Path),
        help="PEM private key for TLS listeners.")
@option("client-ca", type=click.Path(dir_okay=False, path_type=Path),
        help="Require TLS client certificates signed by this CA.")
@option("proxy-protocol", default=(), help="Expect a PROXY v1/v2 header on this TCP or TLS "
        "port; 0 to disable. May be repeated.", **PORTS)
@option("spool-dir", type=click.Path(file_okay=False, path_type=Path),
        default=Path(tempfile.gettempdir()), help="Spool directory for records awaiting upload.")
@option("region", help="AWS region; overrides the profile and environment.")
@option("profile", help="AWS credentials profile.")
@option("role-arn", help="Assume this IAM role (STS, refreshed before expiry) for AWS calls.")
@option("role-session-name", help="Session name for --role-arn; kinesyslog-HOSTNAME by default.")
@option("external-id", help="External id for --role-arn, if the role's trust policy wants one.")
@option("gelf", is_flag=True, help="Listeners speak GELF instead of syslog.")
@option("group-prefix", default=constants.DEFAULT_GROUP_PREFIX, help="Log group prefix.")
@option("prometheus-port", default=(), help="Metrics and health port; 0 to disable. "
        "May be repeated.", **PORTS)
@option("output-dir", type=click.Path(file_okay=False, path_type=Path),
        help="Write finished records into this directory instead of Firehose (no AWS access).")
@option("kinesis-stream", help="Send to this Kinesis data stream instead of Firehose "
        "(PutRecords).")
@option("kinesis-format", type=click.Choice(constants.KINESIS_FORMATS), default="cwl",
        help="Kinesis records: gzip CloudWatch-Logs-style (cwl), or one KPL user record per "
        "event, aggregated (kpl).")
@option("kinesis-compress", is_flag=True, help="Gzip each KPL user record "
        "(--kinesis-format kpl).")
@option("partition-key", type=click.Choice(constants.PARTITION_KEY_MODES), default="source",
        help="Kinesis partition key: the sender's address (one shard per sender, in order), "
        "the log group, or random.")
@option("endpoint-url", help="Firehose or Kinesis endpoint URL (VPC endpoint, test server).")
@option("max-message-size", type=int, default=constants.DEFAULT_MAX_MESSAGE_SIZE,
        help="Longer messages are truncated to this many bytes.")
@option("flush-size", type=int, default=constants.DEFAULT_FLUSH_SIZE,
        help="Flush buffered events when they reach this many bytes.")
@option("flush-interval", type=float, default=constants.DEFAULT_FLUSH_INTERVAL,
        help="Flush buffered events when the oldest is this many seconds old.")
@option("spool-max-size", type=int, default=constants.DEFAULT_SPOOL_MAX_SIZE,
        help="Above this many spooled bytes, TCP reading pauses and UDP datagrams are dropped.")
@option("shutdown-timeout", type=float, default=constants.DEFAULT_SHUTDOWN_TIMEOUT,
        help="Seconds SIGTERM waits for the final uploads.")
@option("rfc3164-timezone", default="UTC", help="IANA time zone of RFC 3164 timestamps.")
@option("max-connections", type=int, default=constants.DEFAULT_MAX_CONNECTIONS,
        help="Most TCP and TLS connections open at once; more are refused and counted.")
@option("max-connections-per-source", type=int,
        default=constants.DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
        help="Open TCP/TLS connections one sender address may hold; 0: no limit.")
@option("idle-timeout", type=float, default=constants.DEFAULT_IDLE_TIMEOUT,
        help="Close a TCP/TLS connection that sent nothing for this many seconds; 0: never.")
@option("debug", is_flag=True, help="Debug logging.")
@option("debug-asyncio", is_flag=True, hidden=True,
        help="Accepted for compatibility with 2.x; there is no asyncio to debug.")
@click.pass_context
def listen(ctx: click.Context, **options: Any) -> None:
    """Receive syslog and relay it to Firehose or Kinesis Data Streams."""
    tls_source = ctx.get_parameter_source("tls_port")
    options.pop("debug_asyncio")
    config = Config(
        stream=options.pop("stream"),
        udp_ports=options.pop("udp_port"),
        tcp_ports=options.pop("tcp_port"),
        tls_ports=options.pop("tls_port"),
        proxy_protocol_ports=options.pop("proxy_protocol"),
        prometheus_ports=options.pop("prometheus_port"),
        **options,
    )
    explicit_tls = tls_source is not click.core.ParameterSource.DEFAULT
    config = validate(config, tls_port_explicit=explicit_tls)

    from kinesyslog.relay import run

    sys.exit(run(config))


@cli.command()
@click.option("--user", envvar="KINESYSLOG_USER", help="Run the service as this user; "
              "root if not given.")
@click.option("--system-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path(constants.DEFAULT_SYSTEMD_DIR), show_default=True,
              help="systemd system unit directory.")
def install(user: str | None, system_dir: Path) -> None:
    """Write a systemd unit for this executable and an override listing every setting."""
    from kinesyslog import systemd

    try:
        systemd.install(systemd.running_executable(), user, system_dir,
                        systemd.listen_variables(listen), out=sys.stdout)
    except systemd.InstallError as error:
        click.echo(f"kinesyslog: error: {error}", err=True)
        sys.exit(1)


@cli.command()
@click.argument("sources", nargs=-1, required=True,
                metavar="PATH|s3://BUCKET/PREFIX|kinesis://STREAM...")
@click.option("--json", "as_json", is_flag=True, help="One JSON event per line.")
@click.option("--group", metavar="PREFIX", help="Only events whose log group starts with this.")
@click.option("--region", help="AWS region for s3:// and kinesis:// sources.")
@click.option("--profile", help="AWS credentials profile for s3:// and kinesis:// sources.")
@click.option("--endpoint-url", help="S3 and Kinesis endpoint URL for s3:// and kinesis:// "
              "sources.")
@click.option("--max-records", type=click.IntRange(min=1),
              default=constants.DUMP_MAX_KINESIS_RECORDS, show_default=True,
              help="Read at most this many Kinesis records from each kinesis:// stream.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
              default=constants.DUMP_KINESIS_TIMEOUT,
              show_default=True, metavar="SECONDS",
              help="Read each kinesis:// stream for at most this long; then name the shards "
              "not read to the end and exit 1.")
def dump(sources: tuple[str, ...], as_json: bool, group: str | None, region: str | None,
         profile: str | None, endpoint_url: str | None, max_records: int,
         timeout: float) -> None:
    """Print the messages of record files, spool directories, S3 objects or Kinesis streams.

    A kinesis://STREAM is read from every shard's oldest record (TRIM_HORIZON) until each
    shard is caught up; KPL aggregated records are split, each event is printed.
    """
    from kinesyslog import dump as dumping

    def s3_client() -> Any:
        return dumping.make_s3_client(region=region, profile=profile, endpoint_url=endpoint_url)

    def kinesis_client() -> Any:
        return dumping.make_kinesis_client(region=region, profile=profile,
                                           endpoint_url=endpoint_url)

    sys.exit(dumping.dump(list(sources), as_json=as_json, group_prefix=group, out=sys.stdout,
                          err=sys.stderr, s3_client_factory=s3_client,
                          kinesis_client_factory=kinesis_client, max_records=max_records,
                          timeout=timeout))


def main() -> None:
    try:
        code = cli.main(prog_name="kinesyslog", standalone_mode=False)
    except ConfigError as error:
        click.echo(f"kinesyslog: error: {error}", err=True)
        sys.exit(constants.EX_CONFIG)
    except click.UsageError as error:
        hint = f" (see 'kinesyslog {error.ctx.info_name} --help')" if error.ctx else ""
        click.echo(f"kinesyslog: error: {error.format_message()}{hint}", err=True)
        sys.exit(constants.EX_CONFIG)
    except click.ClickException as error:
        click.echo(f"kinesyslog: error: {error.format_message()}", err=True)
        sys.exit(error.exit_code)
    except click.Abort:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
