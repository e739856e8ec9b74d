"""The aws-vpc backend's two outside services, through boto3/botocore: instance metadata and the EC2 API.

Imported only by ``backend/awsvpc.py``, which the registry imports only when ``aws-vpc`` is configured: a
vxlan node never loads boto3 (about 17 MiB of RSS and 0.7 s at start, docs/performance.md). boto3 is
synchronous, so each call runs in a worker thread (``asyncio.to_thread``), one at a time (a lock), and the
event loop never waits.

Endpoints and credentials are the SDK's own: ``AWS_ENDPOINT_URL_EC2`` (or ``AWS_ENDPOINT_URL``) points the EC2
client elsewhere, ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` (and ``…_ENDPOINT_MODE``, ``AWS_EC2_METADATA_V1_DISABLED``,
``AWS_METADATA_SERVICE_TIMEOUT``) the metadata fetcher, and credentials come from boto3's provider chain. No
request is signed here, and no credential passes through this code: errors name only the chain's method.

Retrying: botocore's own retries are switched off, so that one policy paces every call, with
``flannel.backoff.Backoff``: throttling, 5xx answers and connection failures are retried a bounded number of
times; authentication and authorisation failures are never retried, and name the credential source.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3  # type: ignore[import-untyped]
import botocore.exceptions  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.parsers import ResponseParserError  # type: ignore[import-untyped]
from botocore.utils import (  # type: ignore[import-untyped]
    IMDSFetcher,
    _RetriesExceededError,
    resolve_imds_endpoint_mode,
)

from flannel.backoff import Backoff, RepeatLimiter, repeats
from flannel.errors import FlannelError
from flannel.secret import make_non_dumpable

log = logging.getLogger(__name__)

SDK_LOGGERS = ("botocore", "boto3", "urllib3")
"""Held at INFO whatever ``-v`` says: botocore's DEBUG lines print every request's headers, among them
``X-Amz-Security-Token`` (an instance role's session token) and the signed ``Authorization``."""
for _logger in SDK_LOGGERS:
    logging.getLogger(_logger).setLevel(logging.INFO)

THROTTLING = frozenset({"RequestLimitExceeded", "Throttling", "ThrottlingException", "RequestThrottled",
                        "TooManyRequestsException", "EC2ThrottledException", "RequestThrottledException"})
"""Error codes that mean "slow down": retried with back-off."""
UNAVAILABLE = frozenset({"InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable"})
"""Error codes of a server-side failure (also sent with a 5xx status): retried with back-off."""
AUTH = frozenset({"AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId", "SignatureDoesNotMatch",
                  "AccessDenied", "AccessDeniedException", "ExpiredToken", "RequestExpired", "OptInRequired",
                  "Blocked", "UnrecognizedClientException", "MissingAuthenticationToken"})
"""Error codes of credentials that are wrong, expired or not allowed: never retried."""
NETWORK_ERRORS: tuple[type[Exception], ...] = (
    botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError, botocore.exceptions.ConnectionClosedError)
CREDENTIAL_ERRORS: tuple[type[Exception], ...] = (
    botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.CredentialRetrievalError)

START_ATTEMPTS = 6
"""Attempts of one call during start-up (about 15 s of back-off in all) before the start fails."""
METADATA_ATTEMPTS = 5
"""Attempts of one metadata read before the start fails naming the endpoint."""
CREDENTIAL_SOURCES = ("environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)", "web identity token",
                      "the shared credentials and config files", "the container credentials endpoint",
                      "the instance role via instance metadata")
"""boto3's credential chain in its order, for the error when it finds nothing."""


class AWSError(FlannelError):
    """An EC2 or metadata call failed; ``code`` is the AWS error code ("" for a network failure)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class AWSAuthError(AWSError):
    """The credentials were refused, or none were found: an operator must act, retrying cannot help."""


class AWSUnavailableError(AWSError):
    """Throttling, a 5xx answer or no connection, still after the bounded retries."""


@dataclass(frozen=True)
class Identity:
    """What instance metadata says about this node."""

    instance_id: str
    """``i-…``"""
    region: str
    """The region, e.g. ``eu-west-1``; the EC2 client is made for it."""
    metadata_version: str
    """``IMDSv2`` when a session token was obtained, ``IMDSv1`` when the service refused to issue one."""
    endpoint: str
    """The metadata endpoint used (for the logs)."""


class _Metadata(IMDSFetcher):  # type: ignore[misc]
    """botocore's fetcher (token first: PUT ``latest/api/token``, then GET with the token; a service that will
    not issue a token is read without one, unless ``AWS_EC2_METADATA_V1_DISABLED``), reporting status codes."""

    def read(self, path: str) -> tuple[str, str]:
        """``(text, version)`` of ``path``; ``AWSError`` naming the endpoint when it is not there."""
        token = self._fetch_metadata_token()
        response = self._get_request(url_path=path, retry_func=lambda _r: False, token=token)
        if response.status_code == 200 and response.text:
            return response.text.strip(), "IMDSv2" if token else "IMDSv1"
        what = "an empty body" if response.status_code == 200 else str(response.status_code)
        raise AWSError(f"instance metadata at {self.get_base_url()} answered {what} for {path}",
                       code=str(response.status_code))


def _metadata_fetcher(session: Any) -> _Metadata:
    """A fetcher configured from the same variables as boto3's own (the instance-role credential provider)."""
    core = session._session  # the botocore session under boto3's (public in botocore, not re-exported by boto3)
    config = {
        "ec2_metadata_service_endpoint": core.get_config_variable("ec2_metadata_service_endpoint"),
        "ec2_metadata_service_endpoint_mode": resolve_imds_endpoint_mode(core),
        "ec2_metadata_v1_disabled": core.get_config_variable("ec2_metadata_v1_disabled"),
    }
    return _Metadata(timeout=core.get_config_variable("metadata_service_timeout"),
                     num_attempts=core.get_config_variable("metadata_service_num_attempts"),
                     user_agent=core.user_agent(), config=config)


async def read_identity(attempts: int = METADATA_ATTEMPTS) -> Identity:
    """Instance id and region from instance metadata, retried ``attempts`` times with back-off."""
    session = await asyncio.to_thread(boto3.session.Session)
    try:
        fetcher = await asyncio.to_thread(_metadata_fetcher, session)
    except botocore.exceptions.BotoCoreError as exc:  # a malformed AWS_EC2_METADATA_SERVICE_ENDPOINT
        raise AWSError(f"instance metadata: {exc}") from None
    endpoint = fetcher.get_base_url()
    backoff = Backoff(0.25, 2.0)
    for attempt in range(1, attempts + 1):
        try:
            instance_id, version = await asyncio.to_thread(fetcher.read, "latest/meta-data/instance-id")
            region, _ = await asyncio.to_thread(fetcher.read, "latest/meta-data/placement/region")
            return Identity(instance_id, region, version, endpoint)
        except (AWSError, botocore.exceptions.BotoCoreError, _RetriesExceededError) as exc:
            reason = str(exc) or "no answer"
            if isinstance(exc, AWSError) and exc.code == "404":
                raise  # the service answers, and says there is no such item: not an EC2 instance
            if attempt == attempts:
                outcome = "unreachable" if isinstance(exc, (_RetriesExceededError, *NETWORK_ERRORS)) else "failed"
                raise AWSError(f"instance metadata at {endpoint} {outcome} after {attempts} attempts: "
                               f"{reason}") from None
            wait = backoff.advance_jittered()
            log.warning("instance metadata at %s: %s (attempt %d of %d, retrying in %.1fs)", endpoint, reason,
                        attempt, attempts, wait)
            await asyncio.sleep(wait)
    raise AssertionError("unreachable")


class EC2:
    """The EC2 client of one region, with this port's retry and error policy."""

    def __init__(self, client: Any, credential_method: str) -> None:
        self._client = client
        self.credential_method = credential_method
        """boto3's name for where the credentials came from (``env``, ``iam-role``, …): safe to print."""
        self.endpoint: str = client.meta.endpoint_url
        self._lock = asyncio.Lock()
        self._quiet = RepeatLimiter(60.0)

    @classmethod
    async def open(cls, region: str) -> EC2:
        """A client for ``region``; ``AWSAuthError`` when boto3's chain finds no credentials at all."""
        def make() -> EC2:
            session = boto3.session.Session(region_name=region)
            try:
                credentials = session.get_credentials()
            except botocore.exceptions.BotoCoreError as exc:  # a provider that exists but fails
                raise AWSAuthError(f"AWS credentials could not be loaded: {exc}") from None
            if credentials is None:
                raise AWSAuthError("no AWS credentials found; looked for " + ", ".join(CREDENTIAL_SOURCES))
            # boto3 now holds the keys (or the instance role's session token) in this process' memory.
            if make_non_dumpable():
                log.info("holding AWS credentials: process marked non-dumpable (no core dumps; debuggers need "
                         "CAP_SYS_PTRACE)")
            config = Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=20,
                            user_agent_extra="flannel-py/aws-vpc")
            return cls(session.client("ec2", config=config), str(credentials.method))

        return await asyncio.to_thread(make)

    async def call(self, operation: str, attempts: int = START_ATTEMPTS, **params: Any) -> dict[str, Any]:
        """``operation`` (a client method name, e.g. ``describe_route_tables``) with ``params``.

        Throttling, 5xx and connection failures are retried up to ``attempts`` times with back-off, then raised
        as ``AWSUnavailableError``; refused credentials raise ``AWSAuthError`` naming the credential source;
        any other error code raises ``AWSError`` with the code, for the caller to judge.
        """
        method: Callable[..., dict[str, Any]] = getattr(self._client, operation)
        backoff = Backoff(0.5, 8.0)
        for attempt in range(1, attempts + 1):
            try:
                async with self._lock:
                    return await asyncio.to_thread(method, **params)
            except botocore.exceptions.ClientError as exc:
                error = exc.response.get("Error", {})
                code = str(error.get("Code", ""))
                status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
                text = f"{_name(operation)} at {self.endpoint}: {code}: {error.get('Message', '')}"
                if code in AUTH or (status in (401, 403) and code not in THROTTLING):
                    raise AWSAuthError(f"{text} (credentials from boto3's {self.credential_method!r} source)",
                                       code) from None
                if code not in THROTTLING and code not in UNAVAILABLE and status < 500:
                    raise AWSError(text, code) from None
                failure: AWSError = AWSUnavailableError(text, code)
            except NETWORK_ERRORS as exc:
                failure = AWSUnavailableError(f"{_name(operation)} at {self.endpoint}: {exc}")
            except ResponseParserError as exc:
                raise AWSError(f"{_name(operation)} at {self.endpoint}: an answer the SDK cannot parse: "
                               f"{str(exc)[:300]}") from None
            except CREDENTIAL_ERRORS as exc:  # an instance role's credentials could not be refreshed, say
                raise AWSAuthError(f"{_name(operation)}: AWS credentials from boto3's {self.credential_method!r} "
                                   f"source are no longer usable: {exc}") from None
            except botocore.exceptions.BotoCoreError as exc:  # HTTP client failures: weather like the above
                failure = AWSUnavailableError(f"{_name(operation)} at {self.endpoint}: {exc}")
            if attempt == attempts:
                raise failure
            wait = backoff.advance_jittered()
            held = self._quiet.check(str(failure))
            if held is not None:
                log.warning("%s (attempt %d of %d, retrying in %.1fs)%s", failure, attempt, attempts, wait,
                            repeats(held))
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")


def _name(operation: str) -> str:
    """``describe_route_tables`` → ``DescribeRouteTables``, as the API and IAM name it."""
    return "".join(part.capitalize() for part in operation.split("_"))
