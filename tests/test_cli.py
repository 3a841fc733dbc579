"""The command line: options, KINESYSLOG_* variables, and exit 78 with one clear line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kinesyslog import __version__
from kinesyslog.cli import cli
from kinesyslog.config import Config, ConfigError, validate


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KINESYSLOG_")}
    return subprocess.run([sys.executable, "-m", "kinesyslog", *args], capture_output=True,
                          text=True, timeout=60, env={**clean, **(env or {})},
                          stdin=subprocess.DEVNULL)


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"kinesyslog, version {__version__}"


def test_help_lists_every_option_with_its_variable() -> None:
    result = run_cli("listen", "--help")
    assert result.returncode == 0
    for name in ("stream", "address", "udp-port", "tcp-port", "tls-port", "cert", "key",
                 "proxy-protocol", "spool-dir", "region", "profile", "gelf", "group-prefix",
                 "prometheus-port", "debug", "output-dir", "endpoint-url", "max-message-size",
                 "flush-size", "flush-interval", "spool-max-size", "shutdown-timeout",
                 "rfc3164-timezone", "client-ca", "role-arn", "kinesis-stream", "kinesis-format",
                 "kinesis-compress", "partition-key"):
        assert f"--{name}" in result.stdout
        assert "KINESYSLOG_" + name.upper().replace("-", "_") in result.stdout


@pytest.mark.parametrize(("args", "env", "needle"), [
    (["--udp-port", "5514"], {}, "--stream: missing"),
    (["--stream", "s", "--udp-port", "70000"], {}, "--udp-port 70000"),
    (["--stream", "s", "--udp-port", "x"], {}, "'x' is not a valid integer"),
    (["--stream", "s"], {}, "no listener"),
    (["--stream", "s", "--udp-port", "5514", "--address", "nonsense"], {}, "--address"),
    (["--stream", "s", "--udp-port", "5514", "--rfc3164-timezone", "Mars/Base"], {},
     "--rfc3164-timezone"),
    (["--stream", "s", "--udp-port", "5514", "--max-message-size", "10"], {},
     "--max-message-size"),
    (["--stream", "s", "--udp-port", "5514", "--flush-interval", "0"], {}, "--flush-interval"),
    (["--stream", "s", "--tcp-port", "5514", "--tls-port", "6514"], {}, "give --cert and --key"),
    (["--stream", "s", "--tcp-port", "5514"], {"KINESYSLOG_TLS_PORT": "6514"},
     "give --cert and --key"),
    (["--stream", "s", "--tcp-port", "5514", "--role-arn", "arn:aws:iam::1:role/x"], {},
     "--role-arn"),
    (["--stream", "s", "--tcp-port", "5514", "--cert", "/etc/hostname"], {}, "--key: missing"),
    (["--stream", "s", "--tcp-port", "5514", "--proxy-protocol", "5515"], {},
     "--proxy-protocol 5515: not a --tcp-port or --tls-port"),
    (["--stream", "s", "--tcp-port", "5514", "--client-ca", "/etc/hostname"], {},
     "--client-ca: needs a TLS listener"),
    (["--stream", "s", "--tcp-port", "5514", "--cert", "/nonexistent.pem", "--key",
      "/etc/hostname"], {}, "--cert /nonexistent.pem: cannot read"),
    (["--output-dir", "/tmp/ksy-out", "--spool-dir", "/tmp/ksy-spool", "--tcp-port", "5514",
      "--cert", "/etc/hostname", "--key", "/etc/hostname"], {},
     "--cert /etc/hostname / --key /etc/hostname: cannot load"),
    (["--stream", "s", "--tcp-port", "5514", "--max-connections", "0"], {}, "--max-connections"),
    (["--stream", "s", "--tcp-port", "5514", "--no-such-option"], {}, "--no-such-option"),
    (["--stream", "s", "--tcp-port", "5514", "--spool-dir", "/proc/none"], {}, "--spool-dir"),
    ([], {"KINESYSLOG_STREAM": "s", "KINESYSLOG_UDP_PORT": "5514 99999"}, "--udp-port 99999"),
    (["--stream", "s", "--kinesis-stream", "k", "--tcp-port", "5514"], {},
     "--kinesis-stream: exclusive with --stream"),
    (["--stream", "s", "--tcp-port", "5514"], {"KINESYSLOG_KINESIS_STREAM": "k"},
     "--kinesis-stream: exclusive with --stream"),
    (["--kinesis-stream", "k", "--output-dir", "/tmp/ksy-out", "--tcp-port", "5514"], {},
     "--kinesis-stream: exclusive with --output-dir"),
    (["--kinesis-stream", "no/slash", "--tcp-port", "5514"], {},
     "--kinesis-stream 'no/slash': not a stream name"),
    (["--kinesis-stream", "k", "--kinesis-compress", "--tcp-port", "5514"], {},
     "--kinesis-compress: gzips KPL user records"),
    (["--kinesis-stream", "k", "--kinesis-format", "json", "--tcp-port", "5514"], {},
     "'json' is not one of 'cwl', 'kpl'"),
    (["--kinesis-stream", "k", "--partition-key", "host", "--tcp-port", "5514"], {},
     "'host' is not one of 'source', 'group', 'random'"),
    (["--stream", "s", "--partition-key", "group", "--tcp-port", "5514"], {},
     "only used with --kinesis-stream"),
    (["--kinesis-stream", "k", "--partition-key", "group", "--group-prefix", "/" + "g" * 250,
      "--tcp-port", "5514"], {}, "--group-prefix: 251 characters"),
])
def test_bad_configuration_exits_78_with_one_line(args: list[str], env: dict[str, str],
                                                  needle: str) -> None:
    result = run_cli("listen", *args, env=env)
    assert result.returncode == 78, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kinesyslog: error: ")
    assert needle in lines[0]
    assert "Traceback" not in result.stderr


def test_port_in_use_exits_78_before_binding_others(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("listen", "--output-dir", str(tmp_path / "o"), "--spool-dir",
                         str(tmp_path / "s"), "--address", "127.0.0.1", "--tcp-port", str(port))
    assert result.returncode == 78, result.stderr
    assert f"--tcp-port {port} on 127.0.0.1: address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_environment_variables_fill_repeatable_options(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import kinesyslog.relay

    parsed: list[Config] = []
    monkeypatch.setattr(kinesyslog.relay, "run", lambda config: parsed.append(config) or 0)
    env = {"KINESYSLOG_STREAM": "logs", "KINESYSLOG_UDP_PORT": "514 0 1514 514",
           "KINESYSLOG_TCP_PORT": "601", "KINESYSLOG_SPOOL_DIR": str(tmp_path),
           "KINESYSLOG_FLUSH_INTERVAL": "2.5", "KINESYSLOG_ADDRESS": "::"}
    result = CliRunner().invoke(cli, ["listen"], env=env)
    assert result.exit_code == 0, result.output
    (config,) = parsed
    assert (config.stream, config.udp_ports, config.tcp_ports) == ("logs", (514, 1514), (601,))
    assert (config.flush_interval, config.address, config.spool_dir) == (2.5, "::", tmp_path)
    assert config.tls_ports == ()


def test_tls_default_port_is_off_without_certificate(tmp_path: Path) -> None:
    config = validate(Config(stream="s", tcp_ports=(514,), tls_ports=(6514,),
                             spool_dir=tmp_path), tls_port_explicit=False)
    assert config.tls_ports == ()


def test_ring_holds_several_flushes(tmp_path: Path) -> None:
    config = Config(stream="s", flush_size=16 * 1024 * 1024, spool_dir=tmp_path)
    assert config.ring_capacity >= 4 * config.flush_size
    assert config.ring_capacity % 4096 == 0


def test_output_dir_must_differ_from_spool(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--output-dir"):
        validate(Config(stream=None, udp_ports=(514,), spool_dir=tmp_path, output_dir=tmp_path),
                 tls_port_explicit=False)
