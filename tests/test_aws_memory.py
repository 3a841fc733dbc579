"""What kinesyslog/aws.py does to keep the uploader's memory small changes nothing AWS sees:
botocore sessions without boto3, endpoint resolvers that keep the endpoints.json entries of
the uploader's own services only, the clients of the start-up freed. Endpoints resolve as
botocore's own resolver has them, the clients work after the start-up (moto_server), clients
made later work, and assumed-role credentials are refreshed through new STS clients."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import botocore.session
import pytest

from kinesyslog.aws import check_stream, client, get_owner, session
from kinesyslog.records import build_records, joined
from kinesyslog.spool import Spool
from kinesyslog.uploader import Uploader, _open_sink
from tests import fake_firehose as fake_firehose_module
from tests.conftest import TEST_ACCOUNT, MotoServer
from tests.fake_firehose import FakeFirehose
from tests.test_uploader import settings_for

ROOT = Path(__file__).resolve().parent.parent
REGIONS = ["us-east-1", "eu-central-1", "ap-southeast-7", "cn-north-1", "us-gov-west-1",
           "us-iso-east-1", "xx-nowhere-1"]


def resolved(aws_client: Any) -> tuple[Any, ...]:
    """What the endpoint resolver decided for a client: where it sends, how it signs."""
    signer = aws_client._request_signer
    return (aws_client.meta.endpoint_url, aws_client.meta.region_name,
            aws_client.meta.partition, signer.signing_name, signer.region_name,
            signer.signature_version)


def gzip_record(index: int) -> bytes:
    document = {"owner": TEST_ACCOUNT, "logGroup": "/kinesyslog/syslog/514",
                "logStream": "192.0.2.7", "subscriptionFilters": ["/kinesyslog/syslog/514"],
                "messageType": "DATA_MESSAGE",
                "logEvents": [{"id": f"{index:056d}", "timestamp": 1519247270240,
                               "message": f"message {index}"}]}
    return gzip.compress(json.dumps(document).encode(), mtime=0)


@pytest.mark.parametrize("variables", [
    {}, {"AWS_USE_FIPS_ENDPOINT": "true"}, {"AWS_USE_DUALSTACK_ENDPOINT": "true"},
    {"AWS_STS_REGIONAL_ENDPOINTS": "legacy"}], ids=["plain", "fips", "dualstack", "sts-legacy"])
def test_endpoints_resolve_as_botocore_resolves_them(
        aws_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        variables: dict[str, str]) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    for region in REGIONS:
        settings = settings_for(tmp_path, region=region)
        ours = session(settings)
        reference = botocore.session.Session()
        reference.set_config_variable("region", region)
        for service in ("firehose", "kinesis", "sts"):
            assert (resolved(client(ours, service, settings, 3, 10))
                    == resolved(reference.create_client(service))), (region, service)
        # Other services (a credential provider may make an SSO client) read the whole file.
        for service in ("sso", "iam", "s3"):
            assert (resolved(ours.create_client(service))
                    == resolved(reference.create_client(service))), (region, service)


def test_the_session_keeps_the_endpoints_of_its_clients_only(aws_env: dict[str, str],
                                                             tmp_path: Path) -> None:
    ours = session(settings_for(tmp_path))
    for service in ("firehose", "kinesis", "sts"):
        ours.create_client(service)
    resolver = ours._get_internal_component("endpoint_resolver")
    assert resolver.everything is None
    assert resolver.get_available_partitions() == (
        botocore.session.Session()._get_internal_component("endpoint_resolver")
        .get_available_partitions())
    ours.create_client("sso")
    assert resolver.everything is not None


def test_the_aws_path_imports_no_boto3(aws_env: dict[str, str], tmp_path: Path) -> None:
    script = """
import sys
from pathlib import Path
from kinesyslog.aws import client, session
from kinesyslog.uploader import UploaderSettings

settings = UploaderSettings(Path("."), None, "s", "us-east-1", None, None, 5.0,
                            role_arn="arn:aws:iam::123456789012:role/r")
aws_session = session(settings)
client(aws_session, "firehose", settings, 3, 10)
client(aws_session, "sts", settings, 3, 10)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("boto3", "s3transfer")))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=os.environ.copy(),
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.stdout.strip() == "[]", result.stderr


def test_the_clients_work_after_the_start_up(moto_server: MotoServer, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.endpoint_url)
    settings = settings_for(tmp_path, stream=moto_server.stream)
    spool = Spool(settings.spool_dir)
    sink, owner = _open_sink(settings)  # the start-up check, the owner, the memory freed
    assert owner == TEST_ACCOUNT
    records = build_records(TEST_ACCOUNT, "/kinesyslog/syslog/514", "192.0.2.7", *joined(
        [b'{"id": "%056d", "timestamp": 1519247270240, "message": "m%d"}' % (i, i)
         for i in range(3)]))
    spool.write_records(records)
    uploader = Uploader(spool, sink)
    assert uploader.step() == 0.0
    assert uploader.delivered == len(records) and spool.pending() == []

    # Clients made later, of the session's services and of another one (the whole file).
    aws_session = session(settings)
    assert check_stream(client(aws_session, "firehose", settings, 3, 10),
                        moto_server.stream) is None
    assert get_owner(client(aws_session, "sts", settings, 3, 10), tmp_path) == TEST_ACCOUNT
    s3 = aws_session.create_client("s3")
    listing = s3.list_objects_v2(Bucket=moto_server.bucket)["Contents"]
    body = s3.get_object(Bucket=moto_server.bucket, Key=listing[0]["Key"])["Body"].read()
    assert body == b"".join(records)


class _LateClock:
    """The fake's time module, its time() late: the credentials its AssumeRole hands out
    expire 12 minutes from now, within the 15 minutes before expiry in which botocore
    refreshes them, so every call assumes the role again, through a new STS client."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def time(self) -> float:
        return time.time() - 3600 + 12 * 60


def test_assumed_role_credentials_are_refreshed_after_the_start_up(
        fake_firehose: FakeFirehose, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fake_firehose_module, "time", _LateClock())
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", fake_firehose.url)
    role = "arn:aws:iam::210987654321:role/kinesyslog-writer"
    settings = settings_for(tmp_path, endpoint_url=fake_firehose.url, role_arn=role,
                            external_id="ext-42")
    spool = Spool(settings.spool_dir)
    sink, owner = _open_sink(settings)
    assumed_at_start = len(fake_firehose.assumed_roles)
    assert owner == TEST_ACCOUNT and assumed_at_start >= 1

    records = [gzip_record(i) for i in range(3)]
    spool.write_records(records)
    uploader = Uploader(spool, sink)
    assert uploader.step() == 0.0
    assert fake_firehose.data() == records
    assert len(fake_firehose.assumed_roles) > assumed_at_start
    assert {p["RoleArn"] for p in fake_firehose.assumed_roles} == {role}
    keys = [key for operation, key in fake_firehose.access_keys]
    operations = [operation for operation, key in fake_firehose.access_keys]
    assert keys[operations.index("PutRecordBatch")] == "ASIAFAKEASSUMEDROLE1"
    assert {key for operation, key in fake_firehose.access_keys
            if operation == "AssumeRole"} == {"testing"}
