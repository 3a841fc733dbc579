"""The frozen executables from pyinstaller.spec (dist/kinesyslog, dist/kinesyslog-dir/), run
with a clean environment (`env -i`) from another working directory: --version, --help, the
relay end to end into --output-dir, and into a moto_server Firehose read back from S3.

Build them first with `make executable` (packaging/build-executable.sh). Without them the
tests skip, except in CI (CI=true), where a missing executable fails."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from kinesyslog import __version__
from tests.e2e.relay_process import (
    Relay,
    decode_records,
    events_of,
    free_ports,
    send_tcp,
    send_udp,
    wait_for,
)
from tests.kinesis_reader import kpl_events, read_stream
from tests.packaging.test_deb import newest_glibc

pytestmark = pytest.mark.e2e

DIST = Path(__file__).resolve().parents[2] / "dist"
ONE_FILE = DIST / "kinesyslog"
ONE_FOLDER = DIST / "kinesyslog-dir" / "kinesyslog"
CLEAN_PATH = "PATH=/usr/bin:/bin"
RUN_TIMEOUT = 60.0
SERVICES = {"firehose", "kinesis", "s3", "sts"}
UDP_MESSAGE = b"<13>1 2026-11-21T10:00:00.123Z host app 1 - - frozen over udp"
TCP_MESSAGE = b"<14>Nov 21 10:00:01 host app: frozen over tcp"


def built(executable: Path) -> Path:
    """Skips only when nothing was built and this is not CI; a partial build fails."""
    if not executable.is_file():
        reason = f"{executable} is not built: run `make executable`"
        if ONE_FILE.exists() or os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return executable


@pytest.fixture(params=["one-file", "one-folder"])
def executable(request: pytest.FixtureRequest) -> Path:
    return built(ONE_FILE if request.param == "one-file" else ONE_FOLDER)


def clean_env(cwd: Path, *variables: str) -> list[str]:
    """`env -i`: nothing of this process's environment, only the given NAME=VALUE pairs."""
    return ["env", "-i", "-C", str(cwd), *variables]


def descendants(pid: int) -> list[int]:
    """Every process below pid (the one-file bootloader's Python child, worker, uploader)."""
    found: list[int] = []
    pending = [pid]
    while pending and len(found) < 100:
        parent = pending.pop()
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{parent}/task").iterdir():
                children = [int(child) for child in (task / "children").read_text().split()]
                found.extend(children)
                pending.extend(children)
    return found


@contextlib.contextmanager
def running(relay: Relay) -> Iterator[Relay]:
    """Starts the relay; if the test fails before it stopped, SIGKILLs its whole tree by PID."""
    relay.start()
    try:
        yield relay
    finally:
        if relay.process is not None and relay.process.poll() is None:
            for pid in [*descendants(relay.pid), relay.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            relay.process.wait(10)


def send_both(port: int) -> None:
    send_udp("127.0.0.1", port, [UDP_MESSAGE + b"\n"])
    send_tcp("127.0.0.1", port, TCP_MESSAGE + b"\n")


def fetch(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


def titles(pid: int) -> list[str]:
    """setproctitle's titles of the relay's processes."""
    found = []
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            found.append(Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0].decode())
    return sorted(found)


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                          check=False)


def test_version_in_empty_environment(executable: Path, tmp_path: Path) -> None:
    result = run([*clean_env(tmp_path), str(executable), "--version"])
    assert (result.returncode, result.stdout) == (0, f"kinesyslog, version {__version__}\n"), \
        result.stderr


def test_listen_help(executable: Path, tmp_path: Path) -> None:
    result = run([*clean_env(tmp_path, CLEAN_PATH), str(executable), "listen", "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: kinesyslog listen [OPTIONS]")
    assert "KINESYSLOG_OUTPUT_DIR" in result.stdout


def test_one_folder_contents() -> None:
    """Every Cython module is inside, and botocore data only for the services used."""
    internal = built(ONE_FOLDER).parent / "_internal"
    sources = Path(__file__).resolve().parents[2] / "kinesyslog" / "_fast"
    for pyx in sources.glob("*.pyx"):
        assert list((internal / "kinesyslog" / "_fast").glob(f"{pyx.stem}.*.so")), pyx.stem
    assert {p.name for p in (internal / "botocore" / "data").iterdir() if p.is_dir()} == SERVICES
    assert (internal / "botocore" / "data" / "endpoints.json").is_file()
    assert not (internal / "cryptography").exists()


def test_output_dir_end_to_end(executable: Path, tmp_path: Path) -> None:
    """UDP and TCP into --output-dir, with metrics and process titles; the one-file build
    unpacks under $TMPDIR and removes what it unpacked at exit."""
    workdir, output, unpack = tmp_path / "cwd", tmp_path / "out", tmp_path / "tmp"
    for directory in (workdir, output, unpack):
        directory.mkdir()
    port, metrics_port = free_ports(), free_ports()
    command = [*clean_env(workdir, CLEAN_PATH, f"HOME={tmp_path}", f"TMPDIR={unpack}"),
               str(executable)]
    relay = Relay(["--output-dir", str(output), "--udp-port", str(port), "--tcp-port", str(port),
                   "--spool-dir", str(tmp_path / "spool"), "--flush-interval", "0.5",
                   "--prometheus-port", str(metrics_port)],
                  command=command)
    with running(relay):
        unpacked = [p.name[:4] for p in unpack.iterdir()]
        assert unpacked == (["_MEI"] if executable == ONE_FILE else []), unpacked
        assert {"kinesyslog: worker", "kinesyslog: uploader"} <= set(titles(relay.pid))
        assert fetch(f"http://127.0.0.1:{metrics_port}/healthz") == (200, "ok\n")
        send_both(port)
        wait_for(lambda: fetch(f"http://127.0.0.1:{metrics_port}/metrics")[1].count(
            f'kinesyslog_message_count_total{{format="syslog",port="{port}",transport=') == 2,
            10, interval=0.1, message="UDP and TCP message counts in /metrics")
        assert relay.stop() == 0, relay.log
    assert list(unpack.iterdir()) == []

    records = [r for path in output.iterdir() for r in decode_records(path.read_bytes())]
    events = events_of(records)
    assert sorted((group, stream, e["message"]) for group, stream, e in events) == [
        (f"/kinesyslog/syslog/{port}", "127.0.0.1", UDP_MESSAGE.decode()),
        (f"/kinesyslog/syslog/{port}", "127.0.0.1", TCP_MESSAGE.decode()),
    ]
    assert {r["owner"] for r in records} == {"000000000000"}
    by_message = {e["message"]: e["timestamp"] for _, _, e in events}
    assert by_message[UDP_MESSAGE.decode()] == 1795255200123  # 2026-11-21T10:00:00.123Z


def test_firehose_end_to_end(moto_server, tmp_path: Path) -> None:
    """The one-file executable against moto with exactly its AWS variables and PATH."""
    executable = built(ONE_FILE)
    port = free_ports()
    variables = [f"{name}={value}" for name, value in moto_server.env.items()]
    relay = Relay(["--stream", moto_server.stream, "--spool-dir", str(tmp_path / "spool"),
                   "--udp-port", str(port), "--tcp-port", str(port), "--flush-interval", "0.5",
                   "--shutdown-timeout", "20"],
                  command=[*clean_env(tmp_path, CLEAN_PATH, *variables), str(executable)])
    with running(relay):
        send_both(port)
        assert relay.stop() == 0, relay.log

    s3 = boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name="us-east-1")
    wait_for(lambda: s3.list_objects_v2(Bucket=moto_server.bucket).get("KeyCount", 0) > 0,
             10, message="an object in S3")
    records = []
    for item in s3.list_objects_v2(Bucket=moto_server.bucket)["Contents"]:
        body = s3.get_object(Bucket=moto_server.bucket, Key=item["Key"])["Body"].read()
        records.extend(decode_records(body))
    assert sorted(e["message"] for _, _, e in events_of(records)) == sorted(
        [UDP_MESSAGE.decode(), TCP_MESSAGE.decode()])
    assert {r["owner"] for r in records} == {"123456789012"}


def test_kinesis_end_to_end(moto_server, tmp_path: Path) -> None:
    """The one-file executable into a moto Kinesis stream, KPL records (botocore's kinesis
    data and the aggregation are in the build)."""
    executable = built(ONE_FILE)
    kinesis = boto3.client("kinesis", endpoint_url=moto_server.endpoint_url,
                           region_name="us-east-1")
    kinesis.create_stream(StreamName="logs", ShardCount=2)
    port = free_ports()
    variables = [f"{name}={value}" for name, value in moto_server.env.items()]
    relay = Relay(["--kinesis-stream", "logs", "--kinesis-format", "kpl", "--spool-dir",
                   str(tmp_path / "spool"), "--udp-port", str(port), "--tcp-port", str(port),
                   "--flush-interval", "0.5", "--shutdown-timeout", "20"],
                  command=[*clean_env(tmp_path, CLEAN_PATH, *variables), str(executable)])
    with running(relay):
        send_both(port)
        assert relay.stop() == 0, relay.log

    user_records = kpl_events(read_stream(kinesis, "logs"), compressed=False)
    assert sorted(u.event["message"] for u in user_records) == sorted(
        [UDP_MESSAGE.decode(), TCP_MESSAGE.decode()])
    assert {u.partition_key for u in user_records} == {"127.0.0.1"}


GLIBC_GOAL = (2, 34)  # Amazon Linux 2023 and RHEL 9


def test_glibc_floor() -> None:
    """The release build (packaging/build-release.sh, made in Debian 11) needs no glibc newer
    than 2.34; a build with the host's Python (`make executable`) needs the host's glibc."""
    floor = newest_glibc(built(ONE_FOLDER).parent)
    if tuple(int(n) for n in floor.split(".")) > GLIBC_GOAL:
        reason = f"{ONE_FOLDER.parent} needs glibc {floor}: `make release` builds for 2.31"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
