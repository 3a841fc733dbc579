"""A fault-injecting stand-in for Amazon Kinesis Data Firehose and Kinesis Data Streams, over
real HTTP on 127.0.0.1.

One server, one endpoint, speaks enough for boto3 of the Firehose JSON 1.1 API
(PutRecordBatch, DescribeDeliveryStream), of the Kinesis Data Streams JSON 1.1 API
(PutRecords, DescribeStreamSummary, ListShards) and of STS (GetCallerIdentity, AssumeRole;
query protocol, XML). Every record it accepted is kept, in arrival order: a Firehose record
with the RecordId it answered, a Kinesis record with its partition key, shard and
SequenceNumber. A test programs faults per operation: a script of per-call faults consumed in
order, then a policy (a function of the call number).

    with FakeFirehose() as firehose:
        firehose.script("PutRecordBatch", THROTTLING, Partial({0, 3}), Hang(5))
        ...
        assert firehose.data() == expected

Kinesis streams are given with their shard count; their shards split the 2^128 hash-key
space evenly, as CreateStream does, and a record goes to the shard whose range holds
int(MD5(partition key), 16), or its ExplicitHashKey. Sequence numbers are 56-digit decimal
strings, increasing per shard.

    with FakeFirehose(kinesis_streams={"logs": 4}) as fake:
        fake.script("PutRecords", Partial({1}, PROVISIONED_THROUGHPUT_EXCEEDED, "Rate exceeded"
                                          " for shard shardId-000000000001 in stream logs ..."),
                    Throttle(per_shard_records_per_call=10))
        ...
        assert [r.shard_id for r in fake.records] == [...]

Outages: ``refuse_connections()`` closes the listening socket (callers get ECONNREFUSED)
until ``accept_connections()`` listens again on the same port; the ``Drop`` fault closes a
connection without answering; ``Delay`` stores the records but answers late (a slow answer,
or a lost one once the client gave up waiting). Each call is logged with its time
(``Call.at``, ``time.monotonic()``): ``call_rate`` and ``first_accepted_after`` measure
retry rates and recovery.

Firehose's and Kinesis' own limits are written here as literals on purpose: the stand-in is
an oracle for the relay's constants, not a copy of them. A PutRecords over Kinesis' limits is
refused as Kinesis does: ValidationException for what its API model forbids (1 to 500
records, a partition key of 1 to 256 characters, data up to 1 MiB),
InvalidArgumentException for a record whose data and partition key (UTF-8) exceed 1 MiB
together, for a call whose data and keys exceed 5 MiB, or for a bad ExplicitHashKey.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import itertools
import json
import re
import select
import socket
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Union
from urllib.parse import parse_qs

MAX_BATCH_RECORDS = 500
MAX_RECORD_BYTES = 1000 * 1024
MAX_BATCH_BYTES = 4 * 1024 * 1024

KINESIS_MAX_RECORDS = 500
KINESIS_MAX_RECORD_BYTES = 1024 * 1024  # data and partition key (UTF-8)
KINESIS_MAX_CALL_BYTES = 5 * 1024 * 1024  # all data and partition keys of one call
KINESIS_MAX_PARTITION_KEY_CHARS = 256
HASH_KEY_SPACE = 2**128

KINESIS_OPERATIONS = ("PutRecords", "DescribeStreamSummary", "ListShards")
OPERATIONS = ("PutRecordBatch", "DescribeDeliveryStream", "GetCallerIdentity",
              *KINESIS_OPERATIONS)


@dataclass(frozen=True)
class Accept:
    """Answer normally."""


@dataclass(frozen=True)
class Partial:
    """PutRecordBatch, PutRecords: the records at these positions of the call fail with this
    error code and message; the rest are stored."""

    indices: frozenset[int]
    code: str = "ServiceUnavailableException"
    message: str = "Slow down."

    def __init__(self, indices: Iterable[int], code: str = "ServiceUnavailableException",
                 message: str = "Slow down.") -> None:
        object.__setattr__(self, "indices", frozenset(indices))
        object.__setattr__(self, "code", code)
        object.__setattr__(self, "message", message)


@dataclass(frozen=True)
class Error:
    """The whole call fails with this HTTP status and error code; nothing is stored."""

    status: int
    code: str
    message: str = "injected fault"


@dataclass(frozen=True)
class Hang:
    """Hold the request for up to ``seconds`` (or until release()/stop()), then answer 503
    ServiceUnavailableException; nothing is stored."""

    seconds: float


@dataclass(frozen=True)
class Drop:
    """Read the request, then close the connection without any answer; nothing is stored."""


@dataclass(frozen=True)
class Delay:
    """PutRecordBatch, PutRecords: store the records at once, then answer after ``seconds`` (or at
    release()/stop()). Shorter than the client's timeout it is a slow answer; longer, the
    client gives up first and the answer is lost although the records were stored (the
    wait then ends as soon as the client closes the connection)."""

    seconds: float


@dataclass(frozen=True)
class Throttle:
    """PutRecords: a shard takes its first ``per_shard_records_per_call`` records of the call;
    the records beyond them fail with ProvisionedThroughputExceededException (per-shard
    throughput). Elsewhere, the call is answered normally."""

    per_shard_records_per_call: int


Fault = Union[Accept, Partial, Error, Hang, Drop, Delay, Throttle]
Policy = Callable[[int], Fault]

THROTTLING = Error(400, "ThrottlingException", "Rate exceeded.")
SERVICE_UNAVAILABLE = Error(503, "ServiceUnavailableException", "Slow down.")
INTERNAL_ERROR = Error(500, "InternalFailure", "Internal service failure.")
ACCESS_DENIED = Error(400, "AccessDeniedException",
                      "User: arn:aws:iam::123456789012:user/test is not authorized to perform: "
                      "firehose:PutRecordBatch")
UNRECOGNIZED_CLIENT = Error(400, "UnrecognizedClientException",
                            "The security token included in the request is invalid.")
NOT_FOUND = Error(400, "ResourceNotFoundException", "Delivery stream not found.")
# Kinesis' per-record error code for an over-busy shard (for Partial; the message names the
# shard: "Rate exceeded for shard shardId-000000000001 in stream S under account 123456789012.")
PROVISIONED_THROUGHPUT_EXCEEDED = "ProvisionedThroughputExceededException"


@dataclass(frozen=True)
class StoredRecord:
    stream: str
    data: bytes
    record_id: str = ""  # Firehose
    partition_key: str = ""  # Kinesis, and the rest
    shard_id: str = ""
    sequence_number: str = ""
    explicit_hash_key: str | None = None


@dataclass(frozen=True)
class Shard:
    shard_id: str
    starting_hash_key: int
    ending_hash_key: int
    starting_sequence_number: str


def even_shards(count: int) -> list[Shard]:
    """The shards of a new stream of ``count`` shards, as CreateStream makes them: the hash-key
    space split evenly, the last shard taking the remainder."""
    width = HASH_KEY_SPACE // count
    return [Shard(f"shardId-{index:012d}", index * width,
                  HASH_KEY_SPACE - 1 if index == count - 1 else (index + 1) * width - 1,
                  _sequence_number(index, 0))
            for index in range(count)]


def _sequence_number(shard_index: int, serial: int) -> str:
    return f"49{shard_index:06d}{serial:048d}"  # 56 digits, increasing with serial


@dataclass(frozen=True)
class Call:
    operation: str
    stream: str | None
    records: int  # records in the request (PutRecordBatch, PutRecords)
    outcome: str  # "ok", "partial", "hang", "dropped", "late" or the error code answered
    stored: int = 0  # records stored by this call
    at: float = field(default_factory=time.monotonic)  # when the request arrived


@dataclass
class _Programme:
    script: deque[Fault] = field(default_factory=deque)
    policy: Policy | None = None
    calls: int = 0


class FakeFirehose:
    def __init__(self, streams: Iterable[str] = ("test-stream",),
                 account: str = "123456789012", max_hang: float = 30.0,
                 kinesis_streams: Mapping[str, int] = {}) -> None:
        self.streams = set(streams)
        # Kinesis stream name -> its shards
        self.kinesis_streams = {name: even_shards(count)
                                for name, count in kinesis_streams.items()}
        self.created = time.time()  # the Kinesis streams' StreamCreationTimestamp
        self._serials = itertools.count(1)  # of the sequence numbers, under _lock
        self.account = account
        self.max_hang = max_hang  # a Hang never holds a request longer than this
        self.hanging = threading.Event()  # set when a Hang starts holding a request
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._records: list[StoredRecord] = []
        self._calls: list[Call] = []
        self.access_keys: list[tuple[str, str]] = []  # (operation, access key id) of each call
        self.assumed_roles: list[dict[str, str]] = []  # AssumeRole parameters
        self._programmes: dict[str, _Programme] = defaultdict(_Programme)
        self._release = threading.Event()
        self._stopped = False
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self._closed_servers: list[ThreadingHTTPServer] = []  # by refuse_connections()

    # Life cycle.

    def start(self) -> FakeFirehose:
        server = ThreadingHTTPServer(("127.0.0.1", self._port), _Handler)
        server.daemon_threads = False  # server_close() joins the request threads
        server.fake = self  # type: ignore[attr-defined]
        self._server = server
        self._port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-firehose", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        self.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for server in self._closed_servers:
            server.server_close()  # joins their request threads
        if self._thread is not None:
            self._thread.join(timeout=10)
            assert not self._thread.is_alive(), "fake firehose thread did not stop"

    def refuse_connections(self) -> None:
        """Closes the listening socket: new connections are refused (ECONNREFUSED) until
        accept_connections(); requests in progress still get their answer."""
        server, thread = self._server, self._thread
        assert server is not None and thread is not None, "start() first"
        server.shutdown()
        thread.join(timeout=10)
        server.socket.close()
        self._closed_servers.append(server)
        self._server = self._thread = None

    def accept_connections(self, timeout: float = 10.0) -> None:
        """Listens again on the same port after refuse_connections()."""
        assert self._server is None, "refuse_connections() first"
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.start()
                return
            except OSError:  # the port is briefly held by another socket
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @property
    def refusing(self) -> bool:
        return self._server is None and self._port != 0

    def __enter__(self) -> FakeFirehose:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._port, "start() first"
        return f"http://127.0.0.1:{self._port}"

    # Programming faults.

    def script(self, operation: str, *faults: Fault) -> None:
        """Faults for the next calls of ``operation``, one per call, in order."""
        assert operation in OPERATIONS, operation
        with self._lock:
            self._programmes[operation].script.extend(faults)

    def set_policy(self, operation: str, policy: Policy | None) -> None:
        """The fault for each call of ``operation`` once its script is used up; the
        argument is the operation's call number, from 0."""
        assert operation in OPERATIONS, operation
        with self._lock:
            self._programmes[operation].policy = policy

    def release(self) -> None:
        """Ends the hangs in progress now."""
        with self._lock:
            released, self._release = self._release, threading.Event()
        released.set()

    # What arrived.

    @property
    def records(self) -> list[StoredRecord]:
        with self._lock:
            return list(self._records)

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def data(self) -> list[bytes]:
        return [record.data for record in self.records]

    def wait_for_records(self, count: int, timeout: float) -> bool:
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self._records) >= count, timeout)

    def call_rate(self, operation: str, start: float, end: float) -> float:
        """Calls of ``operation`` per second that arrived in [start, end) (monotonic time)."""
        count = sum(1 for call in self.calls
                    if call.operation == operation and start <= call.at < end)
        return count / max(end - start, 1e-9)

    def first_accepted_after(self, since: float,
                             operation: str = "PutRecordBatch") -> float | None:
        """When the first ``operation`` call (PutRecordBatch or PutRecords) that stored records
        and answered them arrived after ``since`` (monotonic time), or None."""
        for call in self.calls:
            if (call.operation == operation and call.at >= since and call.stored
                    and call.outcome in ("ok", "partial")):
                return call.at
        return None

    # Used by the handler.

    def _next_fault(self, operation: str) -> Fault:
        with self._lock:
            programme = self._programmes[operation]
            number = programme.calls
            programme.calls += 1
            if programme.script:
                return programme.script.popleft()
            if programme.policy is not None:
                return programme.policy(number)
            return Accept()

    def _store_kinesis(self, call: Call, arrived: list[StoredRecord],
                       failing: Mapping[int, tuple[str, str]]) -> list[dict[str, str]]:
        """Stores the records of a PutRecords call but the failing ones, giving each its
        sequence number, and logs the call (at once, so that a shard's records are stored in
        the order of their sequence numbers); the answer's Records."""
        answers: list[dict[str, str]] = []
        with self._arrived:
            for index, record in enumerate(arrived):
                if index in failing:
                    code, message = failing[index]
                    answers.append({"ErrorCode": code, "ErrorMessage": message})
                    continue
                shard_index = int(record.shard_id.rpartition("-")[2])
                sequence_number = _sequence_number(shard_index, next(self._serials))
                self._records.append(dataclasses.replace(record,
                                                         sequence_number=sequence_number))
                answers.append({"SequenceNumber": sequence_number, "ShardId": record.shard_id})
            self._calls.append(dataclasses.replace(call, stored=len(arrived) - len(failing)))
            self._arrived.notify_all()
        return answers

    def _record_call(self, call: Call, stored: Iterable[StoredRecord] = ()) -> None:
        with self._arrived:
            self._calls.append(call)
            self._records.extend(stored)
            self._arrived.notify_all()

    def _hang(self, seconds: float) -> None:
        with self._lock:
            if self._stopped:
                return
            release = self._release
        self.hanging.set()
        release.wait(min(seconds, self.max_hang))

    def _delay(self, seconds: float, connection: socket.socket) -> None:
        """Waits up to ``seconds`` (bounded by max_hang), or until release()/stop() or until
        the client closes the connection."""
        with self._lock:
            if self._stopped:
                return
            release = self._release
        deadline = time.monotonic() + min(seconds, self.max_hang)
        while not release.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            readable, _, _ = select.select([connection], [], [], min(remaining, 0.1))
            if readable:
                try:
                    if not connection.recv(1, socket.MSG_PEEK):
                        return  # the client gave up and closed the connection
                except OSError:
                    return


def _kinesis_problem(records: list[dict[str, str]]) -> tuple[str, str] | None:
    """(error code, message) of a PutRecords call over Kinesis' limits, or None."""
    if not 1 <= len(records) <= KINESIS_MAX_RECORDS:
        return ("ValidationException",
                "1 validation error detected: Value at 'records' failed to satisfy constraint: "
                f"Member must have length {'less' if records else 'greater'} than or equal to "
                f"{KINESIS_MAX_RECORDS if records else 1}")
    total = 0
    for position, record in enumerate(records, 1):
        key = record.get("PartitionKey", "")
        data = base64.b64decode(record.get("Data", ""))
        explicit = record.get("ExplicitHashKey")
        if not 1 <= len(key) <= KINESIS_MAX_PARTITION_KEY_CHARS:
            return ("ValidationException",
                    f"1 validation error detected: Value '{key}' at 'records.{position}.member."
                    "partitionKey' failed to satisfy constraint: Member must have length "
                    + ("greater than or equal to 1" if not key else
                       f"less than or equal to {KINESIS_MAX_PARTITION_KEY_CHARS}"))
        if len(data) > KINESIS_MAX_RECORD_BYTES:
            return ("ValidationException",
                    f"1 validation error detected: Value at 'records.{position}.member.data' "
                    "failed to satisfy constraint: Member must have length less than or equal "
                    f"to {KINESIS_MAX_RECORD_BYTES}")
        size = len(data) + len(key.encode())
        if size > KINESIS_MAX_RECORD_BYTES:
            return ("InvalidArgumentException",
                    f"Record {position - 1}: data and partition key together are {size} bytes, "
                    f"over the limit of {KINESIS_MAX_RECORD_BYTES}")
        if explicit is not None and not (explicit.isdigit()
                                         and int(explicit) < HASH_KEY_SPACE):
            return ("InvalidArgumentException",
                    f"Invalid ExplicitHashKey. ExplicitHashKey must be in the range: "
                    f"[0, {HASH_KEY_SPACE - 1}]. Specified value was {explicit}")
        total += size
    if total > KINESIS_MAX_CALL_BYTES:
        return "InvalidArgumentException", "Records size exceeds 5 MB limit"
    return None


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeFirehose/1.0"
    timeout = 10  # a stalled client cannot hold a request thread longer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet test output

    @property
    def fake(self) -> FakeFirehose:
        return self.server.fake  # type: ignore[attr-defined]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        target = self.headers.get("X-Amz-Target", "")
        credential = re.search(r"Credential=([^/]+)/", self.headers.get("Authorization", ""))
        operation = target.partition(".")[2] or parse_qs(body.decode()).get("Action", [""])[0]
        with self.fake._lock:
            self.fake.access_keys.append((operation, credential.group(1) if credential else ""))
        if target.startswith("Firehose_20150804."):
            self._firehose(target.partition(".")[2], body)
        elif target.startswith("Kinesis_20131202."):
            self._kinesis(target.partition(".")[2], body)
        elif b"Action=GetCallerIdentity" in body:
            self._get_caller_identity()
        elif b"Action=AssumeRole" in body:
            self._assume_role({k: v[0] for k, v in parse_qs(body.decode()).items()})
        else:
            self._json_error(400, "UnknownOperationException", f"unknown operation {target!r}")

    # Firehose, JSON 1.1.

    def _firehose(self, operation: str, body: bytes) -> None:
        if operation not in OPERATIONS or operation in KINESIS_OPERATIONS:
            self._json_error(400, "UnknownOperationException", operation)
            return
        request = json.loads(body or b"{}")
        stream = request.get("DeliveryStreamName")
        records = request.get("Records", [])
        fault = self.fake._next_fault(operation)
        if not self._answer_fault(fault, operation, stream, len(records)):
            return
        if stream not in self.fake.streams:
            self.fake._record_call(Call(operation, stream, len(records), NOT_FOUND.code))
            self._json_error(400, NOT_FOUND.code,
                             f"Firehose {stream} under account {self.fake.account} not found.")
        elif operation == "DescribeDeliveryStream":
            self.fake._record_call(Call(operation, stream, 0, "ok"))
            self._json(200, {"DeliveryStreamDescription": {
                "DeliveryStreamName": stream,
                "DeliveryStreamARN": f"arn:aws:firehose:us-east-1:{self.fake.account}:"
                                     f"deliverystream/{stream}",
                "DeliveryStreamStatus": "ACTIVE", "DeliveryStreamType": "DirectPut",
                "VersionId": "1", "Destinations": [], "HasMoreDestinations": False}})
        else:
            self._put_record_batch(stream, records, fault)

    def _put_record_batch(self, stream: str, records: list[dict[str, str]], fault: Fault) -> None:
        datas = [base64.b64decode(record["Data"]) for record in records]
        problem = None
        if not 1 <= len(datas) <= MAX_BATCH_RECORDS:
            problem = f"{len(datas)} records: between 1 and {MAX_BATCH_RECORDS} allowed"
        elif any(len(data) > MAX_RECORD_BYTES for data in datas):
            problem = f"a record is over {MAX_RECORD_BYTES} bytes"
        elif sum(map(len, datas)) > MAX_BATCH_BYTES:
            problem = f"the batch is over {MAX_BATCH_BYTES} bytes"
        if problem:
            self.fake._record_call(Call("PutRecordBatch", stream, len(datas),
                                        "InvalidArgumentException"))
            self._json_error(400, "InvalidArgumentException", problem)
            return
        if isinstance(fault, Delay):
            self._put_record_batch_late(stream, datas, fault.seconds)
            return
        failing = fault.indices if isinstance(fault, Partial) else frozenset()
        responses: list[dict[str, str]] = []
        stored: list[StoredRecord] = []
        for index, data in enumerate(datas):
            if index in failing:
                assert isinstance(fault, Partial)
                responses.append({"ErrorCode": fault.code, "ErrorMessage": fault.message})
            else:
                record_id = uuid.uuid4().hex * 2
                responses.append({"RecordId": record_id})
                stored.append(StoredRecord(stream, data, record_id))
        outcome = "partial" if failing else "ok"
        self.fake._record_call(Call("PutRecordBatch", stream, len(datas), outcome, len(stored)),
                               stored)
        self._json(200, {"FailedPutCount": len(datas) - len(stored), "Encrypted": False,
                         "RequestResponses": responses})

    def _put_record_batch_late(self, stream: str, datas: list[bytes], seconds: float) -> None:
        stored = [StoredRecord(stream, data, uuid.uuid4().hex * 2) for data in datas]
        self.fake._record_call(Call("PutRecordBatch", stream, len(datas), "late", len(stored)),
                               stored)
        self.fake._delay(seconds, self.connection)
        with contextlib.suppress(OSError):  # the client gave up: the answer is lost
            self._json(200, {"FailedPutCount": 0, "Encrypted": False,
                             "RequestResponses": [{"RecordId": r.record_id} for r in stored]})

    # Kinesis Data Streams, JSON 1.1.

    def _kinesis(self, operation: str, body: bytes) -> None:
        if operation not in KINESIS_OPERATIONS:
            self._json_error(400, "UnknownOperationException", operation)
            return
        request = json.loads(body or b"{}")
        stream: str = (request.get("StreamName")
                       or str(request.get("StreamARN", "")).partition(":stream/")[2])
        records = request.get("Records", [])
        fault = self.fake._next_fault(operation)
        if not self._answer_fault(fault, operation, stream, len(records)):
            return
        shards = self.fake.kinesis_streams.get(stream)
        if shards is None:
            self.fake._record_call(Call(operation, stream, len(records), NOT_FOUND.code))
            self._json_error(400, NOT_FOUND.code,
                             f"Stream {stream} under account {self.fake.account} not found.")
        elif operation == "DescribeStreamSummary":
            self.fake._record_call(Call(operation, stream, 0, "ok"))
            self._json(200, {"StreamDescriptionSummary": {
                "StreamName": stream, "StreamARN": self._stream_arn(stream),
                "StreamStatus": "ACTIVE", "StreamModeDetails": {"StreamMode": "PROVISIONED"},
                "RetentionPeriodHours": 24, "StreamCreationTimestamp": self.fake.created,
                "EnhancedMonitoring": [{"ShardLevelMetrics": []}], "EncryptionType": "NONE",
                "OpenShardCount": len(shards), "ConsumerCount": 0}})
        elif operation == "ListShards":
            self.fake._record_call(Call(operation, stream, 0, "ok"))
            self._json(200, {"Shards": [{
                "ShardId": shard.shard_id,
                "HashKeyRange": {"StartingHashKey": str(shard.starting_hash_key),
                                 "EndingHashKey": str(shard.ending_hash_key)},
                "SequenceNumberRange": {
                    "StartingSequenceNumber": shard.starting_sequence_number}}
                for shard in shards]})
        else:
            self._put_records(stream, shards, records, fault)

    def _stream_arn(self, stream: str) -> str:
        return f"arn:aws:kinesis:us-east-1:{self.fake.account}:stream/{stream}"

    def _put_records(self, stream: str, shards: list[Shard], records: list[dict[str, str]],
                     fault: Fault) -> None:
        problem = _kinesis_problem(records)
        if problem:
            code, message = problem
            self.fake._record_call(Call("PutRecords", stream, len(records), code))
            self._json_error(400, code, message)
            return
        width = HASH_KEY_SPACE // len(shards)
        arrived: list[StoredRecord] = []  # each record as it would be stored
        for record in records:
            key = record["PartitionKey"]
            explicit = record.get("ExplicitHashKey")
            hash_key = (int(explicit) if explicit is not None
                        else int(hashlib.md5(key.encode()).hexdigest(), 16))
            shard = shards[min(hash_key // width, len(shards) - 1)]
            arrived.append(StoredRecord(stream, base64.b64decode(record.get("Data", "")),
                                        partition_key=key, shard_id=shard.shard_id,
                                        explicit_hash_key=explicit))
        failing: dict[int, tuple[str, str]] = {}  # position -> (error code, message)
        if isinstance(fault, Partial):
            failing = {index: (fault.code, fault.message) for index in fault.indices
                       if index < len(records)}
        elif isinstance(fault, Throttle):
            taken: dict[str, int] = defaultdict(int)
            for index, stored in enumerate(arrived):
                taken[stored.shard_id] += 1
                if taken[stored.shard_id] > fault.per_shard_records_per_call:
                    failing[index] = (PROVISIONED_THROUGHPUT_EXCEEDED,
                                      f"Rate exceeded for shard {stored.shard_id} in stream "
                                      f"{stream} under account {self.fake.account}.")
        outcome = "late" if isinstance(fault, Delay) else "partial" if failing else "ok"
        answers = self.fake._store_kinesis(Call("PutRecords", stream, len(records), outcome),
                                           arrived, failing)
        answer = {"FailedRecordCount": len(failing), "Records": answers,
                  "EncryptionType": "NONE"}
        if not isinstance(fault, Delay):
            self._json(200, answer)
            return
        self.fake._delay(fault.seconds, self.connection)
        with contextlib.suppress(OSError):  # the client gave up: the answer is lost
            self._json(200, answer)

    def _answer_fault(self, fault: Fault, operation: str, stream: str | None,
                      count: int) -> bool:
        """Answers an Error, Hang or Drop fault; True if the call should proceed normally."""
        if isinstance(fault, Drop):
            self.fake._record_call(Call(operation, stream, count, "dropped"))
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return False
        if isinstance(fault, Error):
            self.fake._record_call(Call(operation, stream, count, fault.code))
            if operation == "GetCallerIdentity":
                self._xml_error(fault.status, fault.code, fault.message)
            else:
                self._json_error(fault.status, fault.code, fault.message)
            return False
        if isinstance(fault, Hang):
            self.fake._record_call(Call(operation, stream, count, "hang"))
            self.fake._hang(fault.seconds)
            try:
                if operation == "GetCallerIdentity":
                    self._xml_error(503, SERVICE_UNAVAILABLE.code, "hung up")
                else:
                    self._json_error(503, SERVICE_UNAVAILABLE.code, "hung up")
            except OSError:
                pass  # the client gave up long ago
            return False
        return True

    # STS, query protocol.

    def _assume_role(self, parameters: dict[str, str]) -> None:
        with self.fake._lock:
            self.fake.assumed_roles.append(parameters)
        expiration = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
        xml = (
            '<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
            "<AssumeRoleResult><Credentials>"
            "<AccessKeyId>ASIAFAKEASSUMEDROLE1</AccessKeyId>"
            "<SecretAccessKey>assumed-secret</SecretAccessKey>"
            "<SessionToken>assumed-token</SessionToken>"
            f"<Expiration>{expiration}</Expiration>"
            "</Credentials><AssumedRoleUser>"
            f"<Arn>{parameters.get('RoleArn', '')}/session</Arn>"
            "<AssumedRoleId>AROAFAKE:session</AssumedRoleId>"
            "</AssumedRoleUser></AssumeRoleResult>"
            "<ResponseMetadata><RequestId>fake</RequestId></ResponseMetadata>"
            "</AssumeRoleResponse>")
        self._send(200, xml.encode(), "text/xml")

    def _get_caller_identity(self) -> None:
        fault = self.fake._next_fault("GetCallerIdentity")
        if not self._answer_fault(fault, "GetCallerIdentity", None, 0):
            return
        self.fake._record_call(Call("GetCallerIdentity", None, 0, "ok"))
        account = self.fake.account
        xml = (
            '<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
            "<GetCallerIdentityResult>"
            f"<Arn>arn:aws:iam::{account}:user/test</Arn>"
            "<UserId>AIDAFAKEFIREHOSEUSER</UserId>"
            f"<Account>{account}</Account>"
            "</GetCallerIdentityResult>"
            f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
            "</GetCallerIdentityResponse>"
        )
        self._send(200, xml.encode(), "text/xml")

    # Replies.

    def _send(self, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, document: dict[str, Any]) -> None:
        self._send(status, json.dumps(document).encode(), "application/x-amz-json-1.1")

    def _json_error(self, status: int, code: str, message: str) -> None:
        self._send(status, json.dumps({"__type": code, "message": message}).encode(),
                   "application/x-amz-json-1.1", {"x-amzn-ErrorType": code})

    def _xml_error(self, status: int, code: str, message: str) -> None:
        xml = (
            '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
            f"<Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>"
            f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
        )
        self._send(status, xml.encode(), "text/xml")
