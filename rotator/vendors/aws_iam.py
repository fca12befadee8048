"""AWS IAM access keys of one user behind :class:`rotator.abc.Issuer`.

An IAM user holds at most two access keys, active or inactive: an overlap
vendor whose second slot is also taken by a deactivated key. The stored value is
the JSON text ``{"AccessKeyId":...,"SecretAccessKey":...}`` (compact, sorted
keys), what consumers hand to their SDK. The access key id is public: it is the
key's id and its prefix.

IAM keeps neither a name nor a deactivation time for a key, so both live in tags
of the user: ``rotator-attempt-<AccessKeyId>`` holds the attempt name the key was
minted under (how an orphan is recognised) and ``rotator-deactivated-<AccessKeyId>``
the time the rotator deactivated it. A key deactivated by other hands has no such
time; its creation time stands in, so the next pass may delete it.

Revoking takes two steps. An active key is deactivated; :meth:`AwsIamIssuer.reactivate`
(``rotator reactivate``) restores it when a forgotten consumer broke. An inactive
key is deleted, which the engine does ``delete_after`` later, or at once when a
rotation needs the slot.

Activity is IAM's ``LastUsedDate``. AWS documents no bound on how soon a request
shows up there, and its examples are whole minutes, so ``verify.drain`` should be
generous (tens of minutes, not seconds). The probe is STS ``GetCallerIdentity`` signed
with the new key; IAM is eventually consistent, and the engine repeats a failed
probe with backoff for ``ROTATOR_PROBE_TIMEOUT``.

boto3 is imported only when a client is built; clients can be injected.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, NoReturn

from rotator.abc import Activity, Capabilities, KeyStatus, Minted, VendorKey, format_time, parse_time
from rotator.aws_errors import BotoKind, Kind, classify, classify_botocore
from rotator.errors import (
    ConfigError,
    KeyLimitReached,
    VendorAuthError,
    VendorError,
    VendorNotFound,
    VendorOutcomeUnknown,
    VendorProtocolError,
    VendorRejected,
    VendorUnavailable,
)
from rotator.net import RULE as TLS_RULE
from rotator.net import tls_problem
from rotator.secret import Secret

if TYPE_CHECKING:
    from mypy_boto3_iam.client import IAMClient
    from mypy_boto3_sts.client import STSClient

    from rotator.builtin.issuers import AwsIamIssuerSpec
    from rotator.vendors._http import RetryPolicy

log = logging.getLogger("rotator.vendors")

PREFIX_LEN: Final = 20
ACCESS_KEY_ID: Final = re.compile(r"AKIA[A-Z0-9]{16}")
SECRET_ACCESS_KEY: Final = re.compile(r"[A-Za-z0-9+/]{40}")
ATTEMPT_TAG: Final = "rotator-attempt-"
DEACTIVATED_TAG: Final = "rotator-deactivated-"
_TAG_VALUE_MAX: Final = 256
_STATUSES: Final[dict[str, KeyStatus]] = {"Active": "active", "Inactive": "inactive"}
POLICY_ACTIONS: Final = (
    "iam:CreateAccessKey",
    "iam:ListAccessKeys",
    "iam:GetAccessKeyLastUsed",
    "iam:UpdateAccessKey",
    "iam:DeleteAccessKey",
    "iam:TagUser",
    "iam:UntagUser",
    "iam:ListUserTags",
)
"""Every IAM action the issuer calls. The probe's ``sts:GetCallerIdentity`` needs none."""


def policy_document(user_arns: Sequence[str]) -> dict[str, Any]:
    """The least-privilege IAM policy for rotating the keys of ``user_arns``."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "RotateAccessKeys",
                "Effect": "Allow",
                "Action": list(POLICY_ACTIONS),
                "Resource": list(user_arns),
            }
        ],
    }


# --------------------------------------------------------------------------- values


def encode_value(key_id: str, secret: str) -> Secret:
    """The stored form of a key: compact JSON with sorted keys."""
    text = json.dumps(
        {"AccessKeyId": key_id, "SecretAccessKey": secret}, separators=(",", ":"), sort_keys=True
    )
    return Secret(text)


def decode_value(value: Secret) -> tuple[str, str] | None:
    """``(AccessKeyId, SecretAccessKey)`` of a stored value; ``None`` unless it is such JSON."""
    try:
        data = json.loads(value.reveal())
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    key_id, secret = data.get("AccessKeyId"), data.get("SecretAccessKey")
    if not isinstance(key_id, str) or not isinstance(secret, str):
        return None
    if not ACCESS_KEY_ID.fullmatch(key_id) or not SECRET_ACCESS_KEY.fullmatch(secret):
        return None
    return key_id, secret


def tag_safe(text: str) -> bool:
    """True when ``text`` may be an IAM tag value (letters, digits, spaces, ``_.:/=+-@``)."""
    return len(text) <= _TAG_VALUE_MAX and all(
        c.isalnum() or c in "_.:/=+-@" or unicodedata.category(c).startswith("Z") for c in text
    )


# Under --debug botocore logs whole request and response bodies; CreateAccessKey's answer
# (and any secret store's copy of the value) would put the secret access key in the log.
_SECRET_IN_LOG = re.compile(r"(SecretAccessKey[^A-Za-z0-9+/]{1,40})(?:\\*[A-Za-z0-9+/]){40}")


class _MaskSecretAccessKeys(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except (TypeError, ValueError):
            return True
        if "SecretAccessKey" in text:
            record.msg, record.args = _SECRET_IN_LOG.sub(r"\1********", text), ()
        return True


def _mask_botocore_logs() -> None:
    for name in ("botocore.parsers", "botocore.endpoint"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _MaskSecretAccessKeys) for f in logger.filters):
            logger.addFilter(_MaskSecretAccessKeys())


# --------------------------------------------------------------------------- the issuer


ProbeClient = Callable[[str, str], "STSClient"]
"""Builds an STS client signing with ``(access_key_id, secret_access_key)``."""


class AwsIamIssuer:
    """The access keys of one IAM user.

    ``client`` serves every call but ``CreateAccessKey``, which goes through
    ``mint_client`` (no retries: a repeated create could mint twice).
    """

    def __init__(
        self,
        issuer: str,
        user_name: str,
        *,
        client: IAMClient,
        mint_client: IAMClient | None = None,
        probe_client: ProbeClient,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        owns_clients: bool = True,
    ) -> None:
        self.user_name = user_name
        self._owns_clients = owns_clients
        """False for the process's shared clients: closing the issuer leaves them open."""
        self._name = f"{issuer}/user:{user_name}"
        self._client = client
        self._mint_client = mint_client or client
        self._probe_client = probe_client
        self._clock = clock
        _mask_botocore_logs()

    @property
    def name(self) -> str:
        return self._name

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(max_active=2, overlap=True, prefix_len=PREFIX_LEN)

    def close(self) -> None:
        from rotator.abc import Closeable

        if not self._owns_clients:
            return
        for client in {id(c): c for c in (self._client, self._mint_client)}.values():
            if isinstance(client, Closeable):
                client.close()

    # -- the Issuer protocol

    def list_keys(self) -> list[VendorKey]:
        """Both keys of the user, with last use, attempt name and deactivation time."""
        listed = self._listed()
        tags = self._tags()
        keys = []
        for key in listed:
            try:
                used = self.activity(key.id).last_used_at
            except VendorNotFound:
                continue  # deleted since it was listed
            deactivated = tags.get(DEACTIVATED_TAG + key.id)
            keys.append(
                replace(
                    key,
                    name=tags.get(ATTEMPT_TAG + key.id, ""),
                    last_used_at=used,
                    revoked_at=_time_or_none(deactivated) if key.status == "inactive" else None,
                )
            )
        return keys

    def mint(self, name: str, *, current: Secret | None = None) -> Minted:
        """Create an access key and tag it with ``name``; its format is checked first.

        ``current`` is unused: a second key is created beside the first. A key that
        fails the checks or cannot be tagged is deleted again before this raises.
        """
        del current
        if not tag_safe(name):
            raise ConfigError(f"{self.name}: the attempt name {name!r} does not fit an IAM tag")
        with self._translated("create key", unsafe=True):
            created = self._mint_client.create_access_key(UserName=self.user_name)["AccessKey"]
        key_id, secret = created.get("AccessKeyId"), created.get("SecretAccessKey")
        if not isinstance(key_id, str) or not ACCESS_KEY_ID.fullmatch(key_id):
            raise VendorProtocolError(
                f"{self.name}: create key: the answer holds no access key id of the AKIA format; "
                "check the user's keys by hand"
            )
        problem = None
        if not isinstance(secret, str) or not SECRET_ACCESS_KEY.fullmatch(secret):
            problem = "its secret access key is not 40 characters of base64"
        elif created.get("UserName") != self.user_name or created.get("Status") != "Active":
            problem = "it is not an active key of this user"
        if problem is not None or not isinstance(secret, str):
            self._discard(key_id, VendorProtocolError(f"{self.name}: new key {key_id}: {problem}"))
        try:
            with self._translated("tag key", key_id):
                self._client.tag_user(
                    UserName=self.user_name, Tags=[{"Key": ATTEMPT_TAG + key_id, "Value": name}]
                )
        except VendorError as exc:
            self._discard(key_id, exc)
        key = VendorKey(
            id=key_id,
            prefix=key_id,
            name=name,
            status="active",
            created_at=_utc(created["CreateDate"]),
        )
        return Minted(key=key, value=encode_value(key_id, secret))

    def activity(self, key_id: str, since: datetime | None = None) -> Activity:
        """IAM's ``LastUsedDate`` of ``key_id``; IAM counts no requests."""
        del since
        with self._translated("read last use", key_id):
            out = self._client.get_access_key_last_used(AccessKeyId=key_id)
        if out.get("UserName", self.user_name) != self.user_name:
            raise VendorProtocolError(f"{self.name}: key {key_id} belongs to another user")
        used = out.get("AccessKeyLastUsed", {}).get("LastUsedDate")
        return Activity(key_id=key_id, last_used_at=_utc(used) if used else None)

    def revoke(self, key_id: str) -> VendorKey:
        """Deactivate an active key; delete an inactive one; an unknown key is already gone."""
        now = self._clock()
        key = self._find(key_id)
        if key is None:
            return VendorKey(key_id, key_id, "", "revoked", created_at=now, revoked_at=now)
        if key.status == "active":
            # the time first: a key inactive without it would look deactivated at its creation
            with self._translated("tag key", key_id):
                self._client.tag_user(
                    UserName=self.user_name,
                    Tags=[{"Key": DEACTIVATED_TAG + key_id, "Value": format_time(now)}],
                )
            with self._translated("deactivate key", key_id):
                self._client.update_access_key(UserName=self.user_name, AccessKeyId=key_id, Status="Inactive")
            return replace(key, status="inactive", revoked_at=now)
        with self._translated("delete key", key_id):
            self._client.delete_access_key(UserName=self.user_name, AccessKeyId=key_id)
        self._sweep_tags()
        return replace(key, status="revoked", revoked_at=key.revoked_at or now)

    def reactivate(self, key_id: str) -> VendorKey:
        """Make an inactive key active again (a consumer broke); idempotent."""
        key = self._find(key_id)
        if key is None:
            raise VendorNotFound(f"{self.name}: no access key {key_id}", status=404)
        if key.status == "active":
            return key
        with self._translated("reactivate key", key_id):
            self._client.update_access_key(UserName=self.user_name, AccessKeyId=key_id, Status="Active")
        with self._translated("untag key", key_id):
            self._client.untag_user(UserName=self.user_name, TagKeys=[DEACTIVATED_TAG + key_id])
        return replace(key, status="active", revoked_at=None)

    def probe(self, value: Secret) -> bool:
        """True when STS, asked with the key in ``value``, answers as this user."""
        parsed = decode_value(value)
        if parsed is None:
            return False
        key_id, secret = parsed
        sts = self._probe_client(key_id, secret)
        try:
            with self._translated("probe", key_id):
                arn = sts.get_caller_identity().get("Arn", "")
        except VendorAuthError:
            return False
        finally:
            sts.close()
        parts = arn.split(":", 5)
        return (
            len(parts) == 6
            and parts[2] == "iam"
            and parts[5].startswith("user/")
            and parts[5].rsplit("/", 1)[-1] == self.user_name
        )

    def matches(self, value: Secret, key: VendorKey) -> bool:
        """True when ``value`` is the JSON of an access key whose id is ``key.id``."""
        parsed = decode_value(value)
        return parsed is not None and parsed[0] == key.id

    # -- helpers

    # Neither listing is paged: a user holds at most 2 keys and 50 tags, and IAM answers
    # up to 100 items a page.

    def _listed(self) -> list[VendorKey]:
        """Every key of the user, without name, last use or deactivation time."""
        with self._translated("list keys"):
            listed = self._client.list_access_keys(UserName=self.user_name)["AccessKeyMetadata"]
        return [self._bare(meta) for meta in listed]

    def _bare(self, meta: Any) -> VendorKey:
        key_id, status = meta.get("AccessKeyId"), _STATUSES.get(meta.get("Status", ""))
        if not isinstance(key_id, str) or status is None or "CreateDate" not in meta:
            raise VendorProtocolError(f"{self.name}: list keys: a key without id, status or date")
        if meta.get("UserName", self.user_name) != self.user_name:
            raise VendorProtocolError(f"{self.name}: list keys: key {key_id} of another user")
        return VendorKey(key_id, key_id, "", status, created_at=_utc(meta["CreateDate"]))

    def _find(self, key_id: str) -> VendorKey | None:
        return next((k for k in self._listed() if k.id == key_id), None)

    def _tags(self) -> dict[str, str]:
        with self._translated("read tags"):
            tags = self._client.list_user_tags(UserName=self.user_name)["Tags"]
        return {t["Key"]: t["Value"] for t in tags}

    def _sweep_tags(self) -> None:
        """Drop the rotator's tags of keys that no longer exist (a deleted key's, say)."""
        try:
            live = {k.id for k in self._listed()}
            stale = [
                tag
                for tag in self._tags()
                for prefix in (ATTEMPT_TAG, DEACTIVATED_TAG)
                if tag.startswith(prefix) and tag[len(prefix) :] not in live
            ]
            if stale:
                with self._translated("untag keys"):
                    self._client.untag_user(UserName=self.user_name, TagKeys=stale[:50])
        except VendorError as exc:
            # the key is gone, which is what counts; the next delete sweeps again
            log.warning("%s: could not remove tags of deleted keys: %s", self.name, exc)

    def _discard(self, key_id: str, cause: VendorError) -> NoReturn:
        """Delete a key just minted that cannot be used, then raise ``cause``'s kind."""
        try:
            with self._translated("delete new key", key_id):
                self._client.delete_access_key(UserName=self.user_name, AccessKeyId=key_id)
        except VendorError as exc:
            outcome = f"deleting it failed too ({exc}): delete key {key_id} of the user by hand"
        else:
            outcome = f"key {key_id} was deleted again"
        raise type(cause)(f"{cause}; {outcome}", status=cause.status, code=cause.code) from None

    @contextmanager
    def _translated(self, action: str, key_id: str | None = None, *, unsafe: bool = False) -> Iterator[None]:
        """Raise boto3's errors as :mod:`rotator.errors` kinds naming the user and key id.

        ``unsafe``: the call is not idempotent, so a failure after it may have reached
        IAM is :class:`VendorOutcomeUnknown`.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        where = f"{self.name}: {action}" + (f" {key_id}" if key_id else "")
        try:
            yield
        except ClientError as exc:
            raise _from_client_error(where, action, exc.response, unsafe) from None
        except BotoCoreError as exc:
            raise _from_botocore_error(where, exc, unsafe) from None


def _from_client_error(where: str, action: str, response: Any, unsafe: bool) -> VendorError:
    failure = classify(response)
    text, code, status = failure.text(where), failure.code, failure.status
    if code == "LimitExceeded" and action == "create key":
        return KeyLimitReached(
            f"{text} (the user already has two keys, active or inactive)", status=409, code=code
        )
    if failure.kind is Kind.NOT_FOUND:
        return VendorNotFound(text, status=status, code=code)
    if failure.kind is Kind.DENIED:
        return VendorAuthError(text, status=status, code=code)
    if failure.kind.transient:
        if unsafe and failure.kind is not Kind.THROTTLED:
            return VendorOutcomeUnknown(text, status=status, code=code)
        return VendorUnavailable(text, status=status, code=code)
    return VendorRejected(text, status=status, code=code)


def _from_botocore_error(where: str, exc: Exception, unsafe: bool) -> VendorError:
    kind, name_of = classify_botocore(exc), type(exc).__name__
    if kind is BotoKind.NOT_SENT:  # the request never left
        return VendorUnavailable(f"{where}: cannot reach AWS ({name_of})")
    if kind is BotoKind.LOST:
        if unsafe:
            return VendorOutcomeUnknown(f"{where}: the answer was lost ({name_of})")
        return VendorUnavailable(f"{where}: cannot reach AWS ({name_of})")
    if kind is BotoKind.CREDENTIALS:
        return VendorAuthError(f"{where}: no usable AWS credentials ({name_of})")
    # botocore's other messages may quote parameters: named by class only
    return VendorError(f"{where}: {name_of}")


def _utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return parse_time(str(value))


def _time_or_none(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return parse_time(text)
    except ValueError:
        return None


# --------------------------------------------------------------------------- building


def open_issuer(issuer: str, spec: AwsIamIssuerSpec, *, retry: RetryPolicy | None = None) -> AwsIamIssuer:
    """The issuer for ``spec``, its clients (the process's shared ones for these settings)
    built from the SDK's credential chain."""
    from rotator.aws_session import client, client_with_keys, session
    from rotator.vendors._http import check_base_url

    name = f"{issuer}/user:{spec.user_name}"
    if spec.endpoint_url:
        if tls_problem(spec.endpoint_url):
            raise ConfigError(f"{name}: endpoint_url: {TLS_RULE}")
        check_base_url(spec.endpoint_url, f"{name}: endpoint_url")
    timeout = spec.timeout.total_seconds()
    attempts = retry.attempts if retry is not None else 5
    from botocore.exceptions import BotoCoreError

    try:
        # IAM is global, signed for us-east-1 in the aws partition; other partitions set region
        found = session(
            profile=spec.profile, region=spec.region, role_arn=spec.role_arn, session_name="rotator-iam"
        )
        region = found.region_name or "us-east-1"
        url = spec.endpoint_url

        def iam_client(tries: int) -> IAMClient:
            built: IAMClient = client(
                "iam", region=region, endpoint_url=url, profile=spec.profile, role_arn=spec.role_arn,
                session_name="rotator-iam", attempts=tries, connect_timeout=timeout, read_timeout=timeout,
            )  # fmt: skip
            return built

        iam, mint_client = iam_client(attempts), iam_client(1)
    except BotoCoreError as exc:
        raise _from_botocore_error(f"{name}: connect", exc, False) from None

    def probe_client(key_id: str, secret: str) -> STSClient:
        sts: STSClient = client_with_keys(
            "sts", key_id, secret, region=region, endpoint_url=url, attempts=attempts, timeout=timeout
        )
        return sts

    return AwsIamIssuer(
        issuer,
        spec.user_name,
        client=iam,
        mint_client=mint_client,
        probe_client=probe_client,
        owns_clients=False,
    )
