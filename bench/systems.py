"""The systems under test, each started fresh for one run and always stopped by pid:
our relay (records to --output-dir, to a local moto Firehose or Kinesis data stream, or
kinesyslog 2.x against a stand-in) and rsyslog (imptcp/imudp to omfile)."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.procs import (
    KIB,
    MB,
    POLL_INTERVAL,
    Sampler,
    cmdline,
    port_bound,
    stop_process,
    udp_socket_drops,
)
from bench.verify import Checker, LineChecker, RecordChecker, StreamChecker, Tally
from kinesyslog.constants import SPOOL_LEGACY_PREFIX, SPOOL_RECORD_PREFIX
from kinesyslog.listeners import UDP_SOCKET_BUFFER

if TYPE_CHECKING:
    from bench.senders import TlsFiles

ROOT = Path(__file__).resolve().parent.parent
READY_LINE = "kinesyslog ready"
CHILDREN_TIMEOUT = 10.0  # how long to wait for the worker and uploader to show up
LEGACY_STREAM = "kinesyslog-bench"
LOG_TAIL_LINES = 20
# The listener's last statistics line (logged when it stops).
STATS_RE = re.compile(r"received (\d+) messages \(\d+ bytes\), \d+ truncated, "
                      r"(\d+) UDP dropped \(ring full\)")
MOTO_BUCKET = "kinesyslog-bench"
MOTO_STREAM = "kinesyslog-bench"
MOTO_REGION = "us-east-1"
MOTO_ACCOUNT = "123456789012"  # moto's default account
MOTO_POLL_INTERVAL = 0.1  # seconds between S3 listings: the resolution of elapsed_s in moto mode
MOTO_LISTER_JOIN_TIMEOUT = 10.0
# A Firehose S3 key up to the second it was written in: ...STREAM-VERSION-YYYY-MM-DD-HH-MM-SS-
FIREHOSE_KEY_SECOND = re.compile(r".*-\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d-")
MOTO_STOP_TIMEOUT = 10.0
# --firehose values that deliver to a moto Kinesis data stream: (--kinesis-format, compress).
KINESIS_DESTINATIONS = {"kinesis-cwl": ("cwl", False), "kinesis-kpl": ("kpl", False),
                        "kinesis-kpl-gzip": ("kpl", True)}
DESTINATIONS = ("output-dir", "moto", *KINESIS_DESTINATIONS)
KINESIS_SHARDS = 4
# Records per GetRecords call: the relay's records are at most 1 MiB, so a page holds at most
# about the 10 MB a real GetRecords call returns (moto has no bound of its own).
GET_RECORDS_LIMIT = 10
MAX_GET_RECORDS_CALLS = 100_000  # per shard: far more than a run writes
# AWS settings that must not leak into a run against moto (a profile, real endpoints).
AWS_VARIABLES_CLEARED = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_REGION", "AWS_ENDPOINT_URL_FIREHOSE", "AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL_KINESIS",
    "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)
RSYSLOG_READ_CHUNK = 8 * 1024 * 1024


class StartError(Exception):
    """A system under test (or moto) could not be started."""


def free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dummy_aws_env(endpoint_url: str, workdir: Path) -> dict[str, str]:
    """The environment for a program that talks to moto only: dummy credentials, no profile,
    every AWS endpoint (Firehose, Kinesis, STS, S3) the local server."""
    env = {key: value for key, value in os.environ.items() if key not in AWS_VARIABLES_CLEARED}
    absent = str(workdir / "no-aws-config")
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION=MOTO_REGION, AWS_ENDPOINT_URL=endpoint_url,
               AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=absent,
               AWS_SHARED_CREDENTIALS_FILE=absent)
    return env


def wait_until(predicate: Any, proc: subprocess.Popen[bytes], timeout: float, what: str,
               log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartError(f"{what} exited with {proc.returncode} at start-up:\n"
                               + log_tail(log))
        if predicate():
            return
        time.sleep(POLL_INTERVAL)
    raise StartError(f"{what} was not ready within {timeout} s:\n" + log_tail(log))


def log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-LOG_TAIL_LINES:])


def process_stats(sampler: Sampler) -> dict[str, Any]:
    """CPU, RSS and PSS summed and per role (a role's processes summed; peaks per process)."""
    procs = list(sampler.procs.values())
    cpu: dict[str, float] = {}
    rss: dict[str, float] = {}
    pss: dict[str, float] = {}
    for proc in procs:
        cpu[proc.role] = round(cpu.get(proc.role, 0.0) + proc.cpu_seconds, 2)
        rss[proc.role] = round(rss.get(proc.role, 0.0) + proc.peak_rss_kb * KIB / MB, 1)
        pss[proc.role] = round(pss.get(proc.role, 0.0) + proc.peak_pss_kb * KIB / MB, 1)
    return {
        "cpu_seconds": round(sum(p.cpu_seconds for p in procs), 2),
        "cpu_by_role": cpu,
        "rss_mb_by_role": rss,
        "pss_mb_by_role": pss,
        "peak_rss_mb": round(sampler.peak_rss_kb * KIB / MB, 1),
        "peak_pss_mb": round(sampler.peak_pss_kb * KIB / MB, 1),
        "hwm_mb": round(sum(p.hwm_kb for p in procs) * KIB / MB, 1),
        "samples": sampler.samples,
        "processes": [vars(p).copy() for p in procs],
    }


# --- a Firehose stand-in for --legacy runs ---------------------------------------------------

class StubFirehose(BaseHTTPRequestHandler):
    """Says the stream is ACTIVE and fails every record, so records stay in the spool, where
    the harness counts them; answers sts:GetCallerIdentity with account 000000000000."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        target = self.headers.get("X-Amz-Target", "")
        if target.endswith(".DescribeDeliveryStream"):
            self._json({"DeliveryStreamDescription": {
                "DeliveryStreamName": LEGACY_STREAM, "DeliveryStreamStatus": "ACTIVE",
                "DeliveryStreamARN": f"arn:aws:firehose:us-east-1:000000000000:"
                                     f"deliverystream/{LEGACY_STREAM}",
                "DeliveryStreamType": "DirectPut", "VersionId": "1", "Destinations": [],
                "HasMoreDestinations": False}})
        elif target.endswith(".PutRecordBatch"):
            count = len(json.loads(body)["Records"])
            failure = {"ErrorCode": "ServiceUnavailableException",
                       "ErrorMessage": "benchmark stub: records stay spooled"}
            self._json({"FailedPutCount": count, "Encrypted": False,
                        "RequestResponses": [failure] * count})
        elif target.endswith("GetCallerIdentity"):
            self._json({"Account": "000000000000", "UserId": "BENCH",
                        "Arn": "arn:aws:iam::000000000000:user/bench"})
        elif b"Action=GetCallerIdentity" in body:
            self._reply(200, "text/xml", (
                b'<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
                b"<GetCallerIdentityResult><Arn>arn:aws:iam::000000000000:user/bench</Arn>"
                b"<UserId>BENCH</UserId><Account>000000000000</Account></GetCallerIdentityResult>"
                b"<ResponseMetadata><RequestId>bench</RequestId></ResponseMetadata>"
                b"</GetCallerIdentityResponse>"))
        else:
            self._reply(400, "application/x-amz-json-1.1",
                        b'{"__type": "UnknownOperationException", "message": "benchmark stub"}')

    def _json(self, document: dict[str, Any]) -> None:
        self._reply(200, "application/x-amz-json-1.1", json.dumps(document).encode())

    def _reply(self, code: int, content_type: str, data: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", "bench")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Stub:
    """The stand-in, served from a thread of the harness for all --legacy runs."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), StubFirehose)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, name="stub-firehose",
                         daemon=True).start()

    def shutdown(self) -> None:
        self.server.shutdown()


# --- moto ----------------------------------------------------------------------------------

def moto_server_command() -> str:
    beside_python = Path(sys.executable).with_name("moto_server")
    found = str(beside_python) if beside_python.exists() else shutil.which("moto_server")
    if not found:
        raise StartError("moto_server is not installed (pip install 'moto[server]')")
    return found


class MotoServer:
    """A private moto_server on a free loopback port with one S3 bucket and one DirectPut
    delivery stream into it (moto writes each PutRecordBatch call's records, concatenated,
    as one S3 object), or with kinesis one Kinesis data stream of KINESIS_SHARDS shards.
    Its CPU and memory are sampled apart from the system under test's."""

    def __init__(self, workdir: Path, ready_timeout: float, kinesis: bool = False) -> None:
        self.port = free_port(socket.SOCK_STREAM)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "moto_server.log"
        self.env = dummy_aws_env(self.url, workdir)
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.sampler: Sampler | None = None
        self.cpu_at_start = 0.0  # its start-up (imports, the bucket, the stream) is not counted
        self.kinesis = kinesis
        self.objects_read = 0
        self.first_listed: dict[str, float] = {}  # S3 keys: when a listing first showed them
        self._stop_listing = threading.Event()
        self._lister: threading.Thread | None = None
        self._s3: Any = None
        self._kinesis: Any = None
        self.shard_records: Counter[str] = Counter()  # Kinesis records read, per shard

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [moto_server_command(), "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                start_new_session=True)
        self.sampler = Sampler(self.proc.pid, lambda pid, root: "moto_server")
        wait_until(lambda: port_bound("tcp", self.port), self.proc, self.ready_timeout,
                   "moto_server", self.log_path)
        if self.kinesis:  # moto's stream is ACTIVE at once and has no throughput limits
            self._kinesis = self.client("kinesis")
            self._kinesis.create_stream(StreamName=MOTO_STREAM, ShardCount=KINESIS_SHARDS)
        else:
            self._s3 = self.client("s3")
            self._s3.create_bucket(Bucket=MOTO_BUCKET)
            self.client("firehose").create_delivery_stream(
                DeliveryStreamName=MOTO_STREAM, DeliveryStreamType="DirectPut",
                ExtendedS3DestinationConfiguration={
                    "RoleARN": f"arn:aws:iam::{MOTO_ACCOUNT}:role/firehose-bench",
                    "BucketARN": f"arn:aws:s3:::{MOTO_BUCKET}",
                    "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 60}})
        self.sampler.sample()
        self.cpu_at_start = self.sampler.cpu_seconds()
        self.sampler.start()
        if not self.kinesis:
            self._lister = threading.Thread(target=self._list_bucket, args=(self.client("s3"),),
                                            name="moto-s3-lister", daemon=True)
            self._lister.start()

    def client(self, service: str) -> Any:
        import boto3  # only moto mode needs it

        return boto3.client(service, endpoint_url=self.url, region_name=MOTO_REGION,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def _list_bucket(self, s3: Any) -> None:
        """Lists the bucket every MOTO_POLL_INTERVAL s (also while the harness sends) and
        notes when each key was first listed: S3's LastModified has whole seconds only.
        Firehose's keys sort by the second they were written in, so each listing starts at
        the newest second seen (moto's CPU for a listing grows with the keys it returns).
        objects() reports what fails."""
        from botocore.exceptions import BotoCoreError, ClientError

        start_after: dict[str, str] = {}
        while not self._stop_listing.wait(MOTO_POLL_INTERVAL):
            try:
                for page in s3.get_paginator("list_objects_v2").paginate(Bucket=MOTO_BUCKET,
                                                                          **start_after):
                    listed = time.time()
                    for item in page.get("Contents", []):
                        self.first_listed.setdefault(item["Key"], listed)
                        second = FIREHOSE_KEY_SECOND.match(item["Key"])
                        if second and second[0] > start_after.get("StartAfter", ""):
                            start_after["StartAfter"] = second[0]
            except (BotoCoreError, ClientError):
                continue

    def objects(self) -> Iterator[tuple[str, bytes, float]]:
        """Each object of the bucket (read as tests/e2e/test_relay.py does) with when it was
        first listed, one at a time."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=MOTO_BUCKET):
                listed = time.time()
                for item in page.get("Contents", []):
                    key = item["Key"]
                    body = self._s3.get_object(Bucket=MOTO_BUCKET, Key=key)["Body"].read()
                    self.objects_read += 1
                    yield key, body, self.first_listed.setdefault(key, listed)
        except (BotoCoreError, ClientError) as error:
            raise OSError(f"reading moto's S3 bucket: {error}") from None

    def records(self) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        """(shard id, records) of each GetRecords page of the stream: every shard from
        TRIM_HORIZON until a call returns no records, one page at a time."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            shards = self._kinesis.list_shards(StreamName=MOTO_STREAM)["Shards"]
            for shard in (shard["ShardId"] for shard in shards):
                iterator = self._kinesis.get_shard_iterator(
                    StreamName=MOTO_STREAM, ShardId=shard,
                    ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
                for _ in range(MAX_GET_RECORDS_CALLS):
                    answer = self._kinesis.get_records(ShardIterator=iterator,
                                                       Limit=GET_RECORDS_LIMIT)
                    if not answer["Records"]:
                        break
                    self.shard_records[shard] += len(answer["Records"])
                    yield shard, answer["Records"]
                    iterator = answer.get("NextShardIterator")
                    if not iterator:  # a closed shard's end
                        break
                else:
                    raise OSError(f"moto's Kinesis shard {shard} did not end after "
                                  f"{MAX_GET_RECORDS_CALLS} GetRecords calls")
        except (BotoCoreError, ClientError) as error:
            raise OSError(f"reading moto's Kinesis stream: {error}") from None

    def final_sample(self) -> None:
        if self.sampler:
            self.sampler.stop()
            self.sampler.sample()

    def stats(self) -> dict[str, Any]:
        if not self.sampler:
            return {}
        return {"moto_cpu_seconds": round(self.sampler.cpu_seconds() - self.cpu_at_start, 2),
                "moto_peak_rss_mb": round(self.sampler.peak_rss_kb * KIB / MB, 1),
                "moto_peak_pss_mb": round(self.sampler.peak_pss_kb * KIB / MB, 1)}

    def stop(self) -> None:
        self._stop_listing.set()
        if self._lister:
            self._lister.join(MOTO_LISTER_JOIN_TIMEOUT)
        if self.proc is not None:
            stop_process(self.proc, MOTO_STOP_TIMEOUT, "moto_server", self.sampler)


# --- the systems -----------------------------------------------------------------------------

class System:
    """One system under test, started fresh for one run in its own work directory."""

    name = ""

    def __init__(self, args: argparse.Namespace, workdir: Path, transport: str) -> None:
        self.args = args
        self.workdir = workdir
        self.transport = transport
        self.tcp_port = free_port(socket.SOCK_STREAM)
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.log_path = workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.sampler: Sampler | None = None
        self.startup_cpu: float | None = None
        self.udp_drops: int | None = None

    @property
    def port(self) -> int:
        return self.tcp_port if self.transport == "tcp" else self.udp_port

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def role_of(self, pid: int, root: int) -> str:
        return self.name if pid == root else "child"

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            # Its own session: a Ctrl-C in the terminal reaches the harness only, which then
            # stops the system with SIGTERM like a service manager would.
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.workdir,
                                         env=self.environment(), start_new_session=True)
        # Sampling from the start also learns the children's pids, for stop().
        self.sampler = Sampler(self.proc.pid, self.role_of)
        wait_until(self.ready, self.proc, self.args.ready_timeout, self.name, self.log_path)
        # ready() sampled just now: the CPU of start-up (imports, the stream check), which
        # does not grow with the messages.
        self.startup_cpu = round(self.sampler.cpu_seconds(), 2)
        self.sampler.start()

    def ready(self) -> bool:
        assert self.sampler is not None
        self.sampler.sample()
        return port_bound(self.transport, self.port)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def checker(self, messages: list[bytes], connections: int, gelf: bool,
                base_second: int) -> Checker:
        raise NotImplementedError

    def wait_delivered(self, checker: Checker, deadline: float) -> dict[str, Any]:
        """Waits until every message was delivered or nothing new came for --quiet s;
        "quiet" is False when that did not happen before the deadline."""
        raise NotImplementedError

    def final_sample(self) -> None:
        """The last CPU, VmHWM and socket drop readings, while the processes still exist."""
        if self.sampler:
            self.sampler.stop()
            self.sampler.sample()
        if self.transport == "udp":
            self.udp_drops = udp_socket_drops(self.udp_port)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        return stop_process(self.proc, self.args.stop_timeout, self.name, self.sampler)

    def check(self, checker: Checker) -> Tally:
        """Reads what was delivered (after stop()) into checker."""
        raise NotImplementedError

    def results(self) -> dict[str, Any]:
        """Numbers of the run besides the tally: processes, drops."""
        found = process_stats(self.sampler) if self.sampler else {}
        found["udp_socket_drops"] = self.udp_drops
        found["startup_cpu_seconds"] = self.startup_cpu
        return found

    def read_stats(self) -> dict[str, Any]:
        """What check() read besides the tally."""
        return {}

    def cleanup(self) -> None:
        """Stops helpers (moto) after the system itself."""


class Kinesyslog(System):
    """This relay (or --relay-cmd): records to --output-dir, to a private moto (--firehose
    moto), or, with --legacy, kinesyslog 2.x against the stand-in, records left in the spool."""

    name = "kinesyslog"

    def __init__(self, args: argparse.Namespace, workdir: Path, transport: str, gelf: bool,
                 stub_url: str | None, tls: TlsFiles | None = None) -> None:
        super().__init__(args, workdir, transport)
        self.gelf = gelf
        self.tls = tls  # the TCP port is a --tls-port then
        self.spool = workdir / "spool"
        self.out = workdir / "out"
        self.spool.mkdir()
        self.out.mkdir()
        self.log_path = workdir / "relay.log"
        self.stub_url = stub_url
        self.kinesis = KINESIS_DESTINATIONS.get(args.firehose)  # (format, compress)
        self.moto = (MotoServer(workdir, args.ready_timeout, self.kinesis is not None)
                     if args.firehose != "output-dir" and not args.legacy else None)

    @property
    def collect_dir(self) -> Path:
        return self.spool if self.args.legacy else self.out

    def is_record(self, name: str) -> bool:
        if self.args.legacy:
            return name.startswith((SPOOL_LEGACY_PREFIX, SPOOL_RECORD_PREFIX))
        return not name.startswith(".")

    def command(self) -> list[str]:
        relay = shlex.split(self.args.relay_cmd) if self.args.relay_cmd else [
            sys.executable, "-m", "kinesyslog"]
        stream_port = (["--tls-port", str(self.tcp_port), "--cert", str(self.tls.cert),
                        "--key", str(self.tls.key), "--tcp-port", "0"] if self.tls
                       else ["--tcp-port", str(self.tcp_port)])
        cmd = [*relay, "listen", "--spool-dir", str(self.spool),
               "--address", "127.0.0.1", *stream_port, "--udp-port", str(self.udp_port)]
        if self.gelf:  # every listener then speaks GELF
            cmd.append("--gelf")
        if self.args.legacy:  # only options that kinesyslog 2.x knows
            return [*cmd, "--stream", LEGACY_STREAM, "--tls-port", "0",
                    *self.args.relay_arg]
        if self.moto and self.kinesis:
            record_format, compress = self.kinesis
            cmd += ["--kinesis-stream", MOTO_STREAM, "--kinesis-format", record_format,
                    *(["--kinesis-compress"] if compress else []),
                    "--endpoint-url", self.moto.url, "--region", MOTO_REGION]
        elif self.moto:
            cmd += ["--stream", MOTO_STREAM, "--endpoint-url", self.moto.url,
                    "--region", MOTO_REGION]
        else:
            cmd += ["--output-dir", str(self.out)]
        cmd += ["--flush-interval", str(self.args.flush_interval)]
        if self.args.flush_size:
            cmd += ["--flush-size", str(self.args.flush_size)]
        return cmd + list(self.args.relay_arg)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.moto:  # AWS_ENDPOINT_URL also sends sts:GetCallerIdentity to moto
            env = dummy_aws_env(self.moto.url, self.workdir)
        if not self.args.relay_cmd:  # this checkout, with its extensions built in place
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT),
                                                              env.get("PYTHONPATH")]))
        if self.stub_url:
            env.update(AWS_ENDPOINT_URL=self.stub_url, AWS_ACCESS_KEY_ID="bench",
                       AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                       AWS_EC2_METADATA_DISABLED="true")
            env.pop("AWS_PROFILE", None)
            env.pop("AWS_SESSION_TOKEN", None)
        return env

    def role_of(self, pid: int, root: int) -> str:
        if pid == root:
            return "listener"
        title = cmdline(pid)
        for role in ("worker", "uploader"):
            if f"kinesyslog: {role}" in title:
                return role
        return "child"

    def start(self) -> None:
        if self.moto:
            self.moto.start()
        super().start()
        self._wait_children()

    def ready(self) -> bool:
        assert self.sampler is not None
        self.sampler.sample()
        if not self.args.legacy:
            return READY_LINE in self.log_path.read_text(errors="replace")
        # kinesyslog 2.x prints no ready line: it is ready when its TCP port accepts.
        try:
            socket.create_connection(("127.0.0.1", self.tcp_port), timeout=1).close()
        except OSError:
            return False
        return True

    def _wait_children(self) -> None:
        """Our relay forks a worker and an uploader; wait until both have their titles."""
        assert self.sampler is not None
        deadline = time.monotonic() + CHILDREN_TIMEOUT
        while not self.args.legacy and time.monotonic() < deadline:
            self.sampler.sample()
            roles = {proc.role for proc in self.sampler.procs.values()}
            if {"worker", "uploader"} <= roles:
                return
            time.sleep(POLL_INTERVAL)
        if not self.args.legacy:
            print(f"warning: no worker/uploader process titles after {CHILDREN_TIMEOUT} s; "
                  "measuring every child process", file=sys.stderr)

    def checker(self, messages: list[bytes], connections: int, gelf: bool,
                base_second: int) -> RecordChecker:
        # kinesyslog 2.x's group names are not part of what --legacy checks
        suffix = None if self.args.legacy else f"/{'gelf' if gelf else 'syslog'}/{self.port}"
        if self.kinesis and suffix:
            return StreamChecker(messages, connections, gelf, base_second, suffix,
                                 *self.kinesis)
        return RecordChecker(messages, connections, gelf, base_second, suffix)

    def wait_delivered(self, checker: Checker, deadline: float) -> dict[str, Any]:
        if self.moto:
            return self._wait_spool(deadline)
        return self._wait_files(deadline)

    def _wait_files(self, deadline: float) -> dict[str, Any]:
        """Watches the record directory, without reading any record, until none appeared
        for --quiet seconds."""
        seen: set[str] = set()
        last_change = time.monotonic()
        quiet = False
        while time.monotonic() < deadline and self.alive():
            with os.scandir(self.collect_dir) as entries:
                for entry in entries:
                    if entry.name not in seen and self.is_record(entry.name) \
                            and entry.is_file():
                        seen.add(entry.name)
                        last_change = time.monotonic()
            if time.monotonic() - last_change >= self.args.quiet:
                quiet = True
                break
            time.sleep(POLL_INTERVAL)
        return {"files_seen": len(seen), "quiet": quiet}

    def _wait_spool(self, deadline: float) -> dict[str, Any]:
        """Watches the spool, without reading anything, until it holds no record and did not
        change for --quiet seconds: the uploader deletes each record once Firehose or
        Kinesis took it (here moto, which then has it in S3 or in the stream)."""
        present: set[str] = set()
        seen = 0
        last_change = time.monotonic()
        quiet = False
        while time.monotonic() < deadline and self.alive():
            with os.scandir(self.spool) as entries:
                now = {entry.name for entry in entries
                       if entry.name.startswith(SPOOL_RECORD_PREFIX)}
            if now != present:
                seen += len(now - present)
                present = now
                last_change = time.monotonic()
            if not present and time.monotonic() - last_change >= self.args.quiet:
                quiet = True
                break
            time.sleep(POLL_INTERVAL)
        return {"files_seen": seen, "quiet": quiet}

    def _check_moto(self, checker: RecordChecker) -> None:
        """Feeds what moto got to checker, an S3 object or a GetRecords page at a time. An
        S3 object counts as delivered when first listed, a Kinesis record at its
        ApproximateArrivalTimestamp (moto: when PutRecords stored it, in ms)."""
        assert self.moto is not None
        if not isinstance(checker, StreamChecker):
            for key, body, listed in self.moto.objects():
                checker.feed(key, body, listed)
            return
        for shard, records in self.moto.records():
            for record in records:
                checker.feed_record(f"{shard}/{record['SequenceNumber']}",
                                    record["PartitionKey"], record["Data"],
                                    record["ApproximateArrivalTimestamp"].timestamp())

    def final_sample(self) -> None:
        super().final_sample()
        if self.moto:
            self.moto.final_sample()

    def check(self, checker: Checker) -> Tally:
        assert isinstance(checker, RecordChecker)
        if self.moto:  # after the stop: what the shutdown uploaded is there too
            self._check_moto(checker)
            return checker.finish()
        for path in sorted(self.collect_dir.iterdir()):
            if self.is_record(path.name) and path.is_file():
                checker.feed(path.name, path.read_bytes(), path.stat().st_mtime)
        return checker.finish()

    def results(self) -> dict[str, Any]:
        found = super().results()
        if self.moto:
            found.update(self.moto.stats())
        matches = STATS_RE.findall(log_tail(self.log_path))
        if matches:  # the relay's own counts, from its last statistics line
            received, dropped = matches[-1]
            found.update(relay_received=int(received), relay_udp_dropped=int(dropped))
        return found

    def read_stats(self) -> dict[str, Any]:
        if self.moto and self.kinesis:
            return {"kinesis_shard_records": dict(sorted(self.moto.shard_records.items()))}
        if self.moto:
            return {"s3_objects": self.moto.objects_read}
        return {}

    def cleanup(self) -> None:
        if self.moto:
            self.moto.stop()


RSYSLOG_TEMPLATES = {
    # the message as received (framing removed), one per line
    "raw": 'template(name="bench" type="string" string="%rawmsg%\\n")',
    # parsed timestamp and JSON-escaped message, closer to what our relay writes
    "json": 'template(name="bench" type="string" string="{\\"timestamp\\":'
            '\\"%timereported:::date-rfc3339%\\",\\"message\\":\\"%rawmsg:::json%\\"}\\n")',
}


class Rsyslog(System):
    """rsyslogd -n with a private configuration and work directory: one imptcp or imudp
    input on 127.0.0.1, bound to a ruleset whose only action is omfile (see bench/README.md
    for the choice of parameters)."""

    name = "rsyslogd"

    def __init__(self, args: argparse.Namespace, workdir: Path, transport: str) -> None:
        super().__init__(args, workdir, transport)
        self.conf = workdir / "rsyslog.conf"
        self.output = workdir / "messages.log"
        self.progress: list[tuple[float, int]] = []  # (wall clock, lines so far)
        self.output_mtime = 0.0  # the output file's, before rsyslogd was stopped

    def configuration(self) -> str:
        flush = max(1, math.ceil(self.args.flush_interval))  # whole seconds in rsyslog
        io_buffer = self.args.flush_size or 4 * 1024 * 1024  # our relay's default flush size
        if self.transport == "tcp":
            module = 'module(load="imptcp")'
            listen = (f'input(type="imptcp" address="127.0.0.1" port="{self.tcp_port}" '
                      'ruleset="bench" SupportOctetCountedFraming="on")')
        else:
            # The same effective receive buffer as our relay's: it asks for 8 MiB with
            # SO_RCVBUF, which the kernel caps at net.core.rmem_max (and then doubles);
            # rsyslog as root uses SO_RCVBUFFORCE, which is not capped.
            rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
            module = 'module(load="imudp")'
            listen = (f'input(type="imudp" address="127.0.0.1" port="{self.udp_port}" '
                      f'ruleset="bench" rcvbufSize="{min(UDP_SOCKET_BUFFER, rmem_max)}")')
        # The input is bound to the ruleset "bench", whose only action writes the messages;
        # rsyslogd's own messages go to the default ruleset, which has no action.
        return f"""\
global(workDirectory="{self.workdir}" maxMessageSize="64k")
main_queue(queue.dequeueBatchSize="1024")
{module}
{listen}
{RSYSLOG_TEMPLATES[self.args.rsyslog_template]}
ruleset(name="bench") {{
    action(type="omfile" file="{self.output}" template="bench" asyncWriting="on"
           flushOnTXEnd="off" ioBufferSize="{io_buffer}" flushInterval="{flush}" sync="on")
}}
"""

    def command(self) -> list[str]:
        return [self.args.rsyslogd, "-n", "-f", str(self.conf), "-i",
                str(self.workdir / "rsyslogd.pid")]

    def environment(self) -> dict[str, str]:
        return {"TZ": "UTC", "PATH": "/usr/bin:/bin"}

    def start(self) -> None:
        if not shutil.which(self.args.rsyslogd):
            raise StartError(f"{self.args.rsyslogd} not found (apt-get install rsyslog)")
        self.conf.write_text(self.configuration())
        super().start()

    def checker(self, messages: list[bytes], connections: int, gelf: bool,
                base_second: int) -> LineChecker:
        return LineChecker(messages, connections, gelf, base_second)

    def wait_delivered(self, checker: Checker, deadline: float) -> dict[str, Any]:
        """Counts the lines of the output file as it grows, until there are as many as
        messages or it did not grow for --quiet seconds."""
        lines = 0
        last_change = time.monotonic()
        quiet = False
        file = None
        try:
            while time.monotonic() < deadline and self.alive():
                if file is None and self.output.exists():
                    file = open(self.output, "rb")  # noqa: SIM115 (closed below)
                before = lines
                while file is not None and (chunk := file.read(RSYSLOG_READ_CHUNK)):
                    lines += chunk.count(b"\n")
                if file is not None and lines > before:
                    last_change = time.monotonic()
                    # the file's mtime: when the write that brought it to this count happened
                    self.progress.append((os.fstat(file.fileno()).st_mtime, lines))
                if lines >= checker.count or time.monotonic() - last_change >= self.args.quiet:
                    quiet = True
                    break
                time.sleep(POLL_INTERVAL)
        finally:
            if file is not None:
                file.close()
        return {"lines_seen": lines, "quiet": quiet}

    def final_sample(self) -> None:
        super().final_sample()
        if self.output.exists():
            self.output_mtime = self.output.stat().st_mtime

    def check(self, checker: Checker) -> Tally:
        assert isinstance(checker, LineChecker)
        if not self.output.exists():
            return checker.finish()
        checker.feed_file(self.output.name, self.output.read_bytes(),
                          self.args.rsyslog_template == "json")
        before = 0
        for when, lines in self.progress:  # t95: when the file held 95 % of the lines
            checker.delivered(when, lines - before)
            before = lines
        tally = checker.finish()
        tally.newest_mtime = self.output_mtime or tally.newest_mtime
        return tally
