"""Shared fixtures: a clean fake-AWS environment, the fault-injecting Firehose stand-in, and a
real moto_server subprocess with an S3 bucket and a Firehose delivery stream into it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kinesyslog import metrics
from tests import backends
from tests.fake_firehose import FakeFirehose

MOTO_START_TIMEOUT = 30.0
MOTO_STOP_TIMEOUT = 10.0
TEST_ACCOUNT = "123456789012"  # moto's and the fake's account id

_AWS_VARIABLES_CLEARED = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_REGION",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_FIREHOSE", "AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL_KINESIS",
    "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


@pytest.fixture(scope="session", autouse=True)
def in_process_metrics() -> None:
    """The metric objects for code under test in this process (the relay makes its own)."""
    metrics.setup(None)


@pytest.fixture(params=backends.selected(), ids=lambda backend: backend.name)
def backend(request: pytest.FixtureRequest) -> backends.Backend:
    """Each implementation of the parsers in turn, "cython" and "reference" (tests/backends.py;
    KINESYSLOG_TEST_BACKEND=cython|reference|both selects them)."""
    return request.param


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory,
            ) -> dict[str, str]:
    """Fake credentials and region; no real AWS configuration, profile or metadata service."""
    absent = tmp_path_factory.mktemp("aws") / "absent"
    values = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(absent),
        "AWS_SHARED_CREDENTIALS_FILE": str(absent),
    }
    for name in _AWS_VARIABLES_CLEARED:
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def fake_firehose(aws_env: dict[str, str]) -> Iterator[FakeFirehose]:
    with FakeFirehose() as server:
        yield server


@dataclass(frozen=True)
class MotoServer:
    endpoint_url: str
    bucket: str
    stream: str
    pid: int
    env: dict[str, str]  # for a subprocess: credentials, region, AWS_ENDPOINT_URL


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _moto_server_command() -> str:
    beside_python = Path(sys.executable).with_name("moto_server")
    found = str(beside_python) if beside_python.exists() else shutil.which("moto_server")
    if not found:
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    return found


def _wait_for_port(process: subprocess.Popen[bytes], port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"moto_server did not listen on port {port} within {timeout} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=MOTO_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=MOTO_STOP_TIMEOUT)


@pytest.fixture
def moto_server(aws_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory,
                ) -> Iterator[MotoServer]:
    """A real moto_server on 127.0.0.1: bucket "test-bucket", stream "test-stream" into it.

    moto delivers synchronously: every PutRecord(Batch) call becomes one S3 object holding
    the call's records concatenated (so gzip records form a multi-member gzip file)."""
    import boto3

    port = free_tcp_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [_moto_server_command(), "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            env={**os.environ, **aws_env},
        )
    try:
        _wait_for_port(process, port, MOTO_START_TIMEOUT)
        endpoint = f"http://127.0.0.1:{port}"
        bucket, stream = "test-bucket", "test-stream"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        boto3.client("firehose", endpoint_url=endpoint).create_delivery_stream(
            DeliveryStreamName=stream,
            DeliveryStreamType="DirectPut",
            ExtendedS3DestinationConfiguration={
                "RoleARN": f"arn:aws:iam::{TEST_ACCOUNT}:role/firehose-test",
                "BucketARN": f"arn:aws:s3:::{bucket}",
                "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 60},
            },
        )
        yield MotoServer(endpoint, bucket, stream, process.pid,
                         {**aws_env, "AWS_ENDPOINT_URL": endpoint})
    finally:
        _stop(process)
