"""The one AWS error classifier, and the three parts that use it agreeing on every code."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore import exceptions as bce
from botocore.stub import Stubber

from providers.aws import translated
from rotator.aws_errors import BotoKind, Kind, classify, classify_botocore
from rotator.errors import (
    RotatorError,
    StoreAccessDenied,
    StoreError,
    StoreNotFound,
    StoreUnavailable,
    Transient,
    VendorAuthError,
    VendorNotFound,
    VendorOutcomeUnknown,
    VendorRejected,
    VendorUnavailable,
)
from rotator.vendors.aws_iam import AwsIamIssuer


def _response(code: str, message: str = "m", status: int | None = 400) -> dict[str, Any]:
    meta = {"HTTPStatusCode": status} if status is not None else {}
    return {"Error": {"Code": code, "Message": message}, "ResponseMetadata": meta}


# code, HTTP status, kind
TABLE: list[tuple[str, int | None, Kind]] = [
    ("ResourceNotFoundException", 400, Kind.NOT_FOUND),  # Secrets Manager, DynamoDB
    ("NoSuchEntity", 404, Kind.NOT_FOUND),  # IAM
    ("AccessDenied", 403, Kind.DENIED),
    ("AccessDeniedException", 400, Kind.DENIED),
    ("UnauthorizedOperation", 403, Kind.DENIED),
    ("UnrecognizedClientException", 400, Kind.DENIED),
    ("InvalidClientTokenId", 403, Kind.DENIED),
    ("InvalidAccessKeyId", 403, Kind.DENIED),
    ("InvalidSignatureException", 400, Kind.DENIED),
    ("SignatureDoesNotMatch", 403, Kind.DENIED),
    ("IncompleteSignature", 400, Kind.DENIED),
    ("MissingAuthenticationToken", 403, Kind.DENIED),
    ("ExpiredToken", 400, Kind.DENIED),
    ("ExpiredTokenException", 400, Kind.DENIED),
    ("AuthFailure", 401, Kind.DENIED),
    ("DecryptionFailure", 400, Kind.DENIED),
    ("EncryptionFailure", 400, Kind.DENIED),
    ("Throttling", 400, Kind.THROTTLED),
    ("ThrottlingException", 400, Kind.THROTTLED),
    ("TooManyRequestsException", 400, Kind.THROTTLED),
    ("RequestLimitExceeded", 400, Kind.THROTTLED),
    ("RequestThrottled", 400, Kind.THROTTLED),
    ("ProvisionedThroughputExceededException", 400, Kind.THROTTLED),
    ("EntityTemporarilyUnmodifiable", 409, Kind.THROTTLED),
    ("ConcurrentModification", 409, Kind.THROTTLED),
    ("InternalFailure", 500, Kind.TRANSIENT),
    ("InternalError", 500, Kind.TRANSIENT),
    ("InternalServiceError", 500, Kind.TRANSIENT),
    ("InternalServerError", 500, Kind.TRANSIENT),
    ("ServiceFailure", 500, Kind.TRANSIENT),
    ("ServiceUnavailable", 503, Kind.TRANSIENT),
    ("RequestTimeout", 400, Kind.TRANSIENT),
    ("RequestTimeoutException", 400, Kind.TRANSIENT),
    ("PriorRequestNotComplete", 400, Kind.TRANSIENT),
    # no known code: the status decides
    ("SomethingNew", 401, Kind.DENIED),
    ("SomethingNew", 403, Kind.DENIED),
    ("SomethingNew", 429, Kind.TRANSIENT),
    ("SomethingNew", 502, Kind.TRANSIENT),
    ("SomethingNew", 400, Kind.OTHER),
    ("SomethingNew", None, Kind.OTHER),
    ("LimitExceeded", 409, Kind.OTHER),  # what it means is the caller's (IAM: two keys)
    ("ResourceExistsException", 400, Kind.OTHER),  # a conflict only the caller can name
    ("ConditionalCheckFailedException", 400, Kind.OTHER),
    ("ValidationException", 400, Kind.OTHER),
]


@pytest.mark.parametrize(("code", "status", "kind"), TABLE)
def test_classify_table(code: str, status: int | None, kind: Kind) -> None:
    failure = classify(_response(code, "why", status))
    assert (failure.code, failure.message, failure.status, failure.kind) == (code, "why", status, kind)


def test_kind_transient_is_throttled_or_transient() -> None:
    assert {k for k in Kind if k.transient} == {Kind.THROTTLED, Kind.TRANSIENT}


def test_scheduled_deletion_is_not_found() -> None:
    """Secrets Manager names a secret scheduled for deletion only in its message."""
    deleted = "You can't perform this operation on the secret because it was marked for deletion."
    assert classify(_response("InvalidRequestException", deleted)).kind is Kind.NOT_FOUND
    moto = "You tried to perform the operation on a secret that's currently marked deleted."
    assert classify(_response("InvalidRequestException", moto)).kind is Kind.NOT_FOUND
    assert classify(_response("InvalidRequestException", "bad request")).kind is Kind.OTHER


def test_xml_body_gives_its_code_and_message() -> None:
    xml = "<ErrorResponse><Error><Code>Throttling</Code><Message>Rate exceeded</Message></Error>"
    failure = classify(_response("Unknown", xml, 400))
    assert (failure.code, failure.message, failure.kind) == ("Throttling", "Rate exceeded", Kind.THROTTLED)
    page = classify(_response("502", "<html>Bad Gateway</html>", 502))
    assert (page.code, page.message, page.kind) == ("502", "", Kind.TRANSIENT)


def test_text_names_where_and_cuts_long_messages() -> None:
    assert classify(_response("AccessDenied", "no")).text("t: read") == "t: read: AccessDenied: no"
    assert classify(_response("AccessDenied", "")).text("t: read") == "t: read: AccessDenied"
    assert len(classify(_response("X", "y" * 1000)).text("w")) == len("w: X: ") + 300
    assert classify({}).code == "Unknown"


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (bce.EndpointConnectionError(endpoint_url="https://x"), BotoKind.NOT_SENT),
        (bce.ConnectTimeoutError(endpoint_url="https://x"), BotoKind.LOST),  # as before: not judged
        (bce.ReadTimeoutError(endpoint_url="https://x"), BotoKind.LOST),
        (bce.ConnectionClosedError(endpoint_url="https://x"), BotoKind.LOST),
        (bce.NoCredentialsError(), BotoKind.CREDENTIALS),
        (bce.PartialCredentialsError(provider="env", cred_var="x"), BotoKind.CREDENTIALS),
        (bce.CredentialRetrievalError(provider="p", error_msg="e"), BotoKind.CREDENTIALS),
        (bce.ProfileNotFound(profile="p"), BotoKind.CREDENTIALS),
        (bce.NoRegionError(), BotoKind.NO_REGION),
        (bce.ParamValidationError(report="r"), BotoKind.OTHER),
    ],
)
def test_classify_botocore(exc: Exception, kind: BotoKind) -> None:
    assert classify_botocore(exc) is kind


# ----------------------------------------------------------------- the callers agree

STORE_KIND = {
    Kind.NOT_FOUND: StoreNotFound,
    Kind.DENIED: StoreAccessDenied,
    Kind.THROTTLED: StoreUnavailable,
    Kind.TRANSIENT: StoreUnavailable,
    Kind.OTHER: StoreError,
}
IAM_KIND = {
    Kind.NOT_FOUND: VendorNotFound,
    Kind.DENIED: VendorAuthError,
    Kind.THROTTLED: VendorUnavailable,
    Kind.TRANSIENT: VendorUnavailable,
    Kind.OTHER: VendorRejected,
}


@pytest.mark.parametrize(("code", "status", "kind"), TABLE)
def test_secrets_manager_store_follows_the_table(code: str, status: int | None, kind: Kind) -> None:
    with pytest.raises(StoreError) as info, translated("store", "read"):
        raise bce.ClientError(_response(code, "why", status), "GetSecretValue")  # type: ignore[arg-type]
    assert type(info.value) is STORE_KIND[kind]
    assert isinstance(info.value, Transient) is kind.transient
    assert str(info.value) == f"store: read: {code}: why"


def _iam(code: str, status: int | None, operation: str = "list_access_keys") -> tuple[AwsIamIssuer, Stubber]:
    client = boto3.client(
        "iam", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    stub = Stubber(client)
    stub.add_client_error(operation, code, "why", status or 400)
    sts = boto3.client("sts", region_name="us-east-1")  # never called here
    return AwsIamIssuer("iam", "alice", client=client, probe_client=lambda *_: sts), stub


@pytest.mark.parametrize(("code", "status", "kind"), [row for row in TABLE if row[1] is not None])
def test_iam_issuer_follows_the_table(code: str, status: int, kind: Kind) -> None:
    issuer, stub = _iam(code, status)
    with stub, pytest.raises(RotatorError) as info:
        issuer.list_keys()
    assert type(info.value) is IAM_KIND[kind]
    assert str(info.value) == f"iam/user:alice: list keys: {code}: why"


@pytest.mark.parametrize(("code", "status", "kind"), [row for row in TABLE if row[2].transient])
def test_iam_mint_outcome_is_unknown_only_when_not_throttled(code: str, status: int, kind: Kind) -> None:
    """A throttled CreateAccessKey was never processed; a server error may have been."""
    issuer, stub = _iam(code, status, "create_access_key")
    with stub, pytest.raises(VendorUnavailable) as info:
        issuer.mint("rotator:k:attempt")
    assert isinstance(info.value, VendorOutcomeUnknown) is (kind is Kind.TRANSIENT)
