"""The one reading of AWS failures, shared by the Secrets Manager store, the IAM issuer and
the DynamoDB lease.

:func:`classify` turns a ``ClientError``'s response into an :class:`AwsFailure` (code,
message, status and a :class:`Kind`); :func:`classify_botocore` names the kind of a
botocore error raised before or instead of an answer. Each caller maps the kind onto its
own part of :mod:`rotator.errors` (``StoreNotFound``, ``VendorAuthError``...), so the
codes are listed once here and nowhere else.

botocore is imported inside the functions: the core imports no cloud SDK at module level.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final


class Kind(Enum):
    """What an AWS failure means to the rotator."""

    NOT_FOUND = "not found"
    """The resource (secret, user, key, table) does not exist."""
    DENIED = "denied"
    """The credentials are unknown, expired or not allowed to do this."""
    THROTTLED = "throttled"
    """Refused before it was processed (rate limit, a concurrent change): safe to repeat."""
    TRANSIENT = "transient"
    """A server error or timeout: a retry may succeed, but the call may have been processed."""
    OTHER = "other"
    """Anything else: a bad request, a limit, a conflict only the caller can name."""

    @property
    def transient(self) -> bool:
        return self in (Kind.THROTTLED, Kind.TRANSIENT)


NOT_FOUND: Final = frozenset({"ResourceNotFoundException", "NoSuchEntity"})
DENIED: Final = frozenset({
    "AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthFailure",
    "UnrecognizedClientException", "InvalidClientTokenId", "InvalidAccessKeyId",
    "InvalidSignatureException", "SignatureDoesNotMatch", "IncompleteSignature",
    "MissingAuthenticationToken", "ExpiredToken", "ExpiredTokenException",
    # Secrets Manager: the secret's KMS key may not be used by these credentials
    "DecryptionFailure", "EncryptionFailure",
})  # fmt: skip
THROTTLED: Final = frozenset({
    "Throttling", "ThrottlingException", "TooManyRequestsException", "RequestLimitExceeded",
    "RequestThrottled", "RequestThrottledException", "ProvisionedThroughputExceededException",
    # IAM: another change to the same entity is in progress; nothing was done
    "EntityTemporarilyUnmodifiable", "ConcurrentModification",
})  # fmt: skip
TRANSIENT: Final = frozenset({
    "InternalFailure", "InternalError", "InternalServiceError", "InternalServerError",
    "ServiceFailure", "ServiceUnavailable", "ServiceUnavailableException",
    "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete",
})  # fmt: skip

_DELETED = re.compile(r"delet(ed|ion)\b", re.IGNORECASE)
_XML_FIELD = re.compile(r"<(Code|Message)>([^<]*)</\1>")
MESSAGE_LIMIT: Final = 300
"""Characters of AWS's message kept (AWS messages never echo a secret value)."""


@dataclass(frozen=True)
class AwsFailure:
    """A ``ClientError`` read once: its code, message, HTTP status and kind."""

    code: str
    message: str
    status: int | None
    kind: Kind

    def text(self, where: str) -> str:
        """``<where>: <code>: <message>``, for an error message."""
        return f"{where}: {self.code}: {self.message[:MESSAGE_LIMIT]}".rstrip(": ")


def classify(response: Any) -> AwsFailure:
    """The failure in a ``ClientError.response``.

    A message that is an XML body botocore could not parse (an XML error, a proxy's page)
    gives up its ``<Code>`` and ``<Message>``. The code decides first; without a known code,
    HTTP 401/403 is :attr:`Kind.DENIED`, and 429 or 5xx :attr:`Kind.TRANSIENT`.
    """
    error = response.get("Error", {}) if isinstance(response, dict) else {}
    code, message = str(error.get("Code", "Unknown")), str(error.get("Message", ""))
    meta = response.get("ResponseMetadata", {}) if isinstance(response, dict) else {}
    status = int(meta.get("HTTPStatusCode") or 0) or None
    if message.startswith("<"):
        found = dict(_XML_FIELD.findall(message))
        code, message = found.get("Code", code), found.get("Message", "")
    return AwsFailure(code, message, status, _kind(code, message, status))


_BY_CODE: dict[str, Kind] = {
    # later sets win where a code stands in two: not-found first, then denied, throttled, transient
    **dict.fromkeys(TRANSIENT, Kind.TRANSIENT),
    **dict.fromkeys(THROTTLED, Kind.THROTTLED),
    **dict.fromkeys(DENIED, Kind.DENIED),
    **dict.fromkeys(NOT_FOUND, Kind.NOT_FOUND),
}


def _kind(code: str, message: str, status: int | None) -> Kind:
    if code == "InvalidRequestException" and _DELETED.search(message):
        return Kind.NOT_FOUND  # Secrets Manager: the secret is scheduled for deletion
    if code in _BY_CODE:
        return _BY_CODE[code]
    if status in (401, 403):
        return Kind.DENIED
    if status is not None and (status == 429 or status >= 500):
        return Kind.TRANSIENT
    return Kind.OTHER


class BotoKind(Enum):
    """What a botocore error (no answer from AWS) means."""

    NOT_SENT = "not sent"
    """The endpoint could not be reached: the request never left."""
    LOST = "lost"
    """The connection failed during the exchange: the request may have been processed."""
    CREDENTIALS = "credentials"
    """No usable credentials were found (none, partial, a failed fetch, a missing profile)."""
    NO_REGION = "no region"
    """No region was configured."""
    OTHER = "other"
    """Anything else; its message may quote parameters, so name it by class only."""


def classify_botocore(exc: BaseException) -> BotoKind:
    """The kind of a ``BotoCoreError``."""
    from botocore import exceptions as bce

    if isinstance(exc, bce.EndpointConnectionError):
        return BotoKind.NOT_SENT
    if isinstance(exc, bce.ConnectionError | bce.HTTPClientError):
        return BotoKind.LOST
    credentials = (
        bce.NoCredentialsError,
        bce.PartialCredentialsError,
        bce.CredentialRetrievalError,
        bce.ProfileNotFound,
    )
    if isinstance(exc, credentials):
        return BotoKind.CREDENTIALS
    if isinstance(exc, bce.NoRegionError):
        return BotoKind.NO_REGION
    return BotoKind.OTHER
