"""AWS access of the uploader: botocore sessions and credentials (profile, STS AssumeRole),
clients with the relay's timeouts, the start-up check of the stream and the account id.

botocore is imported inside the functions: --output-dir makes no AWS access at all.
"""

from __future__ import annotations

import json
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
    """The botocore session of --profile and --region, made as boto3.Session makes it: boto3
    itself is not imported (its resources and s3transfer, ~2 MB the uploader never uses)."""
    import botocore.session
    from botocore.exceptions import ProfileNotFound

    session = botocore.session.Session()
    _keep_endpoints_of_clients_only(session)
    if settings.profile is not None:
        session.set_config_variable("profile", settings.profile)
    if settings.region is not None:
        session.set_config_variable("region", settings.region)
    try:
        session.get_component("data_loader")  # reads the profile, as boto3.Session does
    except ProfileNotFound:
        raise StreamCheckError(
            f"--profile {settings.profile}: no such profile in the AWS config or credentials "
            "file; fix --profile or create the profile") from None
    if not session.get_config_variable("region"):
        raise StreamCheckError("no AWS region is configured: pass --region or set "
                               "AWS_DEFAULT_REGION (or give the --profile a region)")
    if settings.role_arn:
        return _assumed_role_session(session, settings)
    return session


def _assumed_role_session(source: Any, settings: AwsOptions) -> Any:
    """A session whose credentials come from sts:AssumeRole with the source session's
    credentials, fetched on first use and refreshed by botocore before they expire."""
    import socket

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
        client_creator=source.create_client, source_credentials=source_credentials,
        role_arn=settings.role_arn, extra_args=extra_args)
    assumed = botocore.session.Session()
    _keep_endpoints_of_clients_only(assumed)
    assumed._credentials = DeferredRefreshableCredentials(
        method="assume-role", refresh_using=fetcher.fetch_credentials)
    assumed.set_config_variable("region", source.get_config_variable("region"))
    return assumed


# The services of the clients the uploader makes, whose endpoints.json entries its sessions
# keep.
_CLIENT_SERVICES = frozenset({"firehose", "kinesis", "sts"})


def _keep_endpoints_of_clients_only(session: Any) -> None:
    """Gives the session an endpoint resolver with the endpoints.json entries of
    _CLIENT_SERVICES only; asked about another service (a credential provider may create an
    SSO client, say), it reads the whole file again and keeps it, as botocore's own does.

    botocore's resolver keeps the whole file, ~7 MB of Python objects once parsed; freed
    after the clients are made, most of that memory stays resident all the same, pinned by
    the objects allocated meanwhile."""
    import gc
    import gzip

    from botocore.loaders import JSONFileLoader, create_loader
    from botocore.regions import EndpointResolver

    class PlainJSONFileLoader(JSONFileLoader):
        """Makes dicts where botocore's makes OrderedDicts, 40 % smaller: 3 MB less at the
        peak, while the whole file is in memory."""

        def load_file(self, file_path: str) -> Any:
            for extension, opener in ((".json", open), (".json.gz", gzip.open)):
                if os.path.isfile(file_path + extension):
                    with opener(file_path + extension, "rb") as file:
                        return json.loads(file.read())
            return None

    def load() -> tuple[Any, bool]:
        loader = create_loader(session.get_config_variable("data_path"))
        loader.file_loader = PlainJSONFileLoader()
        endpoints, path = loader.load_data_with_path("endpoints")
        return endpoints, loader.is_builtin_path(path)

    class Resolver(EndpointResolver):
        def __init__(self) -> None:
            endpoints, builtin = load()
            kept = json.dumps({**endpoints, "partitions": [
                {**partition, "services": {name: entry for name, entry
                                           in partition["services"].items()
                                           if name in _CLIENT_SERVICES}}
                for partition in endpoints["partitions"]]})
            del endpoints
            # A full collection also empties CPython's free lists, whose objects, spread over
            # the memory the file took, would keep much of it (~1 MB with --role-arn).
            gc.collect()
            super().__init__(json.loads(kept), uses_builtin_data=builtin)
            self.everything: Any = None

        def _of(self, service_name: str) -> Any:
            """This resolver for _CLIENT_SERVICES, else one with the whole file."""
            if service_name in _CLIENT_SERVICES:
                return super()
            if self.everything is None:
                self.everything = EndpointResolver(*load())
            return self.everything

        def construct_endpoint(self, service_name: str, *args: Any, **kwargs: Any) -> Any:
            return self._of(service_name).construct_endpoint(service_name, *args, **kwargs)

        def get_available_endpoints(self, service_name: str, *args: Any, **kwargs: Any) -> Any:
            return self._of(service_name).get_available_endpoints(service_name, *args,
                                                                  **kwargs)

        def get_service_endpoints_data(self, service_name: str, *args: Any,
                                       **kwargs: Any) -> Any:
            return self._of(service_name).get_service_endpoints_data(service_name, *args,
                                                                     **kwargs)

    # Replaces botocore's own factory, which the session calls on its first create_client.
    session._internal_components.lazy_register_component("endpoint_resolver", Resolver)


def client(session: Any, service: str, settings: AwsOptions, connect_timeout: float,
            read_timeout: float) -> Any:
    from botocore.config import Config

    # One attempt per call ("max_attempts" would count retries only): the uploader retries.
    config = Config(connect_timeout=connect_timeout, read_timeout=read_timeout,
                    retries={"total_max_attempts": 1, "mode": "standard"})
    # --endpoint-url is the destination's (Firehose or Kinesis) only; without it botocore
    # reads AWS_ENDPOINT_URL[_<SERVICE>].
    endpoint_url = settings.endpoint_url if service in ("firehose", "kinesis") else None
    try:
        return session.create_client(service, config=config, endpoint_url=endpoint_url)
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
