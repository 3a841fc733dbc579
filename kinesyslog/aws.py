"""AWS access of the uploader: boto3 sessions and credentials (profile, STS AssumeRole),
clients with the relay's timeouts, the start-up check of the stream and the account id.

boto3 is imported inside the functions: --output-dir makes no AWS access at all.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kinesyslog.constants import OUTPUT_DIR_OWNER, OWNER_CACHE_FILE, SPOOL_TEMP_PREFIX

log = logging.getLogger("kinesyslog.uploader")

# Error codes that retrying cannot fix: the data stays spooled, retried every
# RETRY_PERMANENT_DELAY.
_CREDENTIAL_ERRORS = frozenset({
    "UnrecognizedClientException", "InvalidClientTokenId", "InvalidSignatureException",
    "SignatureDoesNotMatch", "ExpiredTokenException", "ExpiredToken", "IncompleteSignature",
    "MissingAuthenticationToken", "NoCredentialsError", "PartialCredentialsError",
})
# Kinesis answers these per record for a stream encrypted with a KMS key it cannot use.
_KMS_ERRORS = frozenset({
    "KMSAccessDeniedException", "KMSDisabledException", "KMSNotFoundException",
    "KMSInvalidStateException", "KMSOptInRequired",
})
_PERMANENT_ERRORS = _CREDENTIAL_ERRORS | _KMS_ERRORS | {"ResourceNotFoundException"}


def is_permanent_error(code: str) -> bool:
    return code.startswith("AccessDenied") or code in _PERMANENT_ERRORS


class AwsOptions(Protocol):
    """The options that say how to reach AWS (UploaderSettings has them)."""

    @property
    def region(self) -> str | None: ...
    @property
    def profile(self) -> str | None: ...
    @property
    def endpoint_url(self) -> str | None: ...
    @property
    def role_arn(self) -> str | None: ...
    @property
    def role_session_name(self) -> str | None: ...
    @property
    def external_id(self) -> str | None: ...


class StreamCheckError(Exception):
    """A configuration the uploader cannot work with; the message is one line naming the fix."""


def session(settings: AwsOptions) -> Any:
    import boto3
    from botocore.exceptions import ProfileNotFound

    try:
        session = boto3.Session(profile_name=settings.profile, region_name=settings.region)
    except ProfileNotFound:
        raise StreamCheckError(
            f"--profile {settings.profile}: no such profile in the AWS config or credentials "
            "file; fix --profile or create the profile") from None
    if not session.region_name:
        raise StreamCheckError("no AWS region is configured: pass --region or set "
                               "AWS_DEFAULT_REGION (or give the --profile a region)")
    if settings.role_arn:
        return _assumed_role_session(session, settings)
    return session


def _assumed_role_session(source: Any, settings: AwsOptions) -> Any:
    """A session whose credentials come from sts:AssumeRole with the source session's
    credentials, fetched on first use and refreshed by botocore before they expire."""
    import socket

    import boto3
    import botocore.session
    from botocore.credentials import AssumeRoleCredentialFetcher, DeferredRefreshableCredentials

    source_credentials = source.get_credentials()
    if source_credentials is None:
        raise StreamCheckError(f"--role-arn {settings.role_arn}: no AWS credentials to assume "
                               "it with; configure the instance role, --profile or the "
                               "AWS_* variables")
    extra_args = {"RoleSessionName": settings.role_session_name
                  or f"kinesyslog-{socket.gethostname()}"[:64]}
    if settings.external_id:
        extra_args["ExternalId"] = settings.external_id
    fetcher = AssumeRoleCredentialFetcher(
        client_creator=source._session.create_client, source_credentials=source_credentials,
        role_arn=settings.role_arn, extra_args=extra_args)
    assumed = botocore.session.Session()
    assumed._credentials = DeferredRefreshableCredentials(
        method="assume-role", refresh_using=fetcher.fetch_credentials)
    return boto3.Session(botocore_session=assumed, region_name=source.region_name)


def client(session: Any, service: str, settings: AwsOptions, connect_timeout: float,
            read_timeout: float) -> Any:
    from botocore.config import Config

    # One attempt per call ("max_attempts" would count retries only): the uploader retries.
    config = Config(connect_timeout=connect_timeout, read_timeout=read_timeout,
                    retries={"total_max_attempts": 1, "mode": "standard"})
    # --endpoint-url is the destination's (Firehose or Kinesis) only; without it boto3 reads
    # AWS_ENDPOINT_URL[_<SERVICE>].
    endpoint_url = settings.endpoint_url if service in ("firehose", "kinesis") else None
    try:
        return session.client(service, config=config, endpoint_url=endpoint_url)
    except ValueError as error:  # botocore: "Invalid endpoint: …"
        raise StreamCheckError(f"--endpoint-url {endpoint_url}: {error}; give a URL such as "
                               f"https://{service}.us-east-1.amazonaws.com") from None


@dataclass(frozen=True)
class _Destination:
    option: str  # the command-line option that names the stream
    kind: str  # what AWS calls the stream
    service: str  # for the log
    permissions: str  # what the credentials need


_FIREHOSE = _Destination("--stream", "delivery stream", "Firehose",
                         "firehose:DescribeDeliveryStream and firehose:PutRecordBatch")
_KINESIS = _Destination("--kinesis-stream", "data stream", "Kinesis",
                        "kinesis:DescribeStreamSummary and kinesis:PutRecords")


def check_stream(firehose: Any, stream: str) -> str | None:
    """Describes the delivery stream. Raises StreamCheckError when nothing could ever be
    delivered; returns a warning when the check itself failed (the relay starts anyway)."""
    response = _describe(
        lambda: firehose.describe_delivery_stream(DeliveryStreamName=stream), _FIREHOSE,
        stream, firehose.meta.region_name)
    if isinstance(response, str):
        return response
    status = response.get("DeliveryStreamDescription", {}).get("DeliveryStreamStatus")
    if status != "ACTIVE":
        return f"delivery stream {stream} is {status}; records are spooled until it is ACTIVE"
    return None


def check_kinesis_stream(kinesis: Any, stream: str) -> str | None:
    """Describes the data stream (DescribeStreamSummary), as check_stream does the delivery
    stream."""
    region = kinesis.meta.region_name
    response = _describe(lambda: kinesis.describe_stream_summary(StreamName=stream), _KINESIS,
                         stream, region)
    if isinstance(response, str):
        return response
    summary = response.get("StreamDescriptionSummary", {})
    status = summary.get("StreamStatus")
    if status not in ("ACTIVE", "UPDATING"):  # UPDATING (resharding) takes records
        return f"data stream {stream} is {status}; records are spooled until it is ACTIVE"
    log.info("data stream %s in region %s: %s, %s open shard(s)", stream, region, status,
             summary.get("OpenShardCount", "?"))
    return None


def _describe(call: Callable[[], Any], destination: _Destination, stream: str,
              region: str) -> dict[str, Any] | str:
    """The answer of a describe call, or a warning when the check itself failed; raises
    StreamCheckError when nothing could ever be delivered."""
    from botocore import exceptions

    option, kind = destination.option, destination.kind
    try:
        return dict(call())
    except exceptions.ClientError as error:
        code = error_code(error)
        message = error.response.get("Error", {}).get("Message", "")
        if code == "ResourceNotFoundException":
            raise StreamCheckError(
                f"{option} {stream}: {kind} not found in region {region}; "
                f"create it or fix {option}/--region") from None
        if code.startswith("AccessDenied"):
            raise StreamCheckError(
                f"{option} {stream}: access denied ({message}); allow "
                f"{destination.permissions} on the stream for the credentials in use "
                "(--profile)") from None
        if code in _CREDENTIAL_ERRORS:
            raise StreamCheckError(
                f"AWS rejected the credentials ({code}: {message}); fix --profile or "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the instance role") from None
        if code in ("ValidationException", "InvalidArgumentException"):
            raise StreamCheckError(f"{option} {stream}: {message}; fix {option}") from None
        return (f"could not check {kind} {stream} in region {region} ({code}: "
                f"{message}); records are spooled until {destination.service} accepts them")
    except (exceptions.NoCredentialsError, exceptions.PartialCredentialsError,
            exceptions.CredentialRetrievalError) as error:
        raise StreamCheckError(
            f"no usable AWS credentials ({error}): use --profile, set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or run with an instance role") from None
    except exceptions.BotoCoreError as error:
        return (f"could not check {kind} {stream} in region {region} ({error}); "
                f"records are spooled until {destination.service} answers")


def get_owner(sts: Any, spool_dir: Path) -> str:
    """The AWS account id that owns the records (STS GetCallerIdentity).

    The last id read is kept in the spool directory, so that a relay that starts while AWS
    is unreachable still labels its records with the right account."""
    from botocore.exceptions import BotoCoreError, ClientError

    cache = spool_dir / OWNER_CACHE_FILE
    try:
        owner = str(sts.get_caller_identity()["Account"])
    except (BotoCoreError, ClientError, KeyError) as error:
        try:
            owner = cache.read_text().strip()
        except OSError:
            owner = OUTPUT_DIR_OWNER
        log.warning("could not read the AWS account id (sts:GetCallerIdentity: %s); records "
                    "name owner %s", error, owner)
        return owner
    try:
        if not cache.exists() or cache.read_text().strip() != owner:
            temporary = cache.with_name(f"{SPOOL_TEMP_PREFIX}{OWNER_CACHE_FILE}")
            temporary.write_text(owner + "\n")
            os.replace(temporary, cache)
    except OSError as error:  # a full disk must not stop the relay; only the cache is stale
        log.warning("could not keep the account id in %s: %s", cache, error)
    return owner


def error_code(error: BaseException) -> str:
    """The AWS error code of a botocore exception, else its class name."""
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
    return type(error).__name__
