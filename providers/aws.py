"""AWS Secrets Manager behind :class:`rotator.abc.SecretStore`.

Versions and labels. A rotation writes one version whose ``VersionId`` is the
attempt id (``PutSecretValue`` with ``ClientRequestToken=attempt``: a retried
write never makes a second version) labelled ``AWSPENDING``; promotion moves
``AWSCURRENT`` onto it (Secrets Manager then puts ``AWSPREVIOUS`` on the old one)
and drops ``AWSPENDING``. Reads always name a stage (``VersionStage``): the
default version does not follow ``AWSCURRENT`` everywhere (moto does not move it).

New secrets. The first stage creates the secret without a value
(``CreateSecret`` with the stamp tag and ``kms_key_id``), then puts the value as
``AWSPENDING``. Secrets Manager labels the first version of a secret
``AWSCURRENT`` too, whatever the request asks, so no first version can be hidden;
nobody could read the secret before, so no consumer loses a key. Such a version
(the secret's only one, both labels, our stamp without ``promoted_at``) reads as
pending, not current,
until :meth:`AwsStore.promote` stamps it and drops ``AWSPENDING``. A crash
between the two calls leaves a secret without versions, which reads as empty
and, like a missing one, answers consumers ``ResourceNotFoundException``.

Stamps. Secrets Manager keeps no metadata per version, only tags per secret
(at most 50; keys up to 127 and values up to 255 characters, of letters,
digits, spaces and ``+ - = . _ : / @``; JSON does not fit). Each version the
rotator wrote has one tag ``rotator:<attempt>`` =
``fp=<fingerprint> at=<promoted_at or -> key=<key id>``: the attempt is the
version's id, and one tag per version keeps the count low. Tags of versions
that no longer hold ``AWSCURRENT``, ``AWSPENDING`` or ``AWSPREVIOUS`` are
removed. The tag is written before the value, so a version of ours is never
unstamped; a tag whose version never came is ignored.

Revision: the ids of the versions labelled ``AWSCURRENT`` and ``AWSPENDING``;
every value written, by anyone, moves one of them. Secrets Manager has no
compare-and-set: the check narrows the race to one ``DescribeSecret`` before
the write.

``check_access`` reads the current value and replays it (``PutSecretValue``
with its own ``VersionId`` and the same text, which Secrets Manager documents as
a no-op yet authorizes as a write), then writes the tag ``rotator:checked``: a
secret we may read but not write or tag fails here, before a cutover.

The client comes from ``region``, ``profile``, ``role_arn`` (STS AssumeRole,
refreshed before expiry) and ``endpoint_url``, with three retries in botocore's
standard retry mode and bounded timeouts, shared by every target with the same settings
(:func:`rotator.aws_session.client`); or it is injected (``client=``).
Errors are translated at this edge by :func:`translated`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from providers._field import FieldCodec
from rotator.abc import Stamp, StoredVersion, TargetState, format_time, parse_time
from rotator.aws_errors import NOT_FOUND, BotoKind, Kind, classify, classify_botocore
from rotator.aws_session import client as aws_client
from rotator.errors import (
    StoreAccessDenied,
    StoreConflict,
    StoreError,
    StoreFormatError,
    StoreNotFound,
    StoreUnavailable,
)
from rotator.net import require_tls
from rotator.secret import Secret

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager.client import SecretsManagerClient

    from rotator.builtin.stores import AwsTarget

CURRENT, PENDING, PREVIOUS = "AWSCURRENT", "AWSPENDING", "AWSPREVIOUS"
TAG_PREFIX = "rotator:"
CHECK_TAG = "rotator:checked"
_TAG_VALUE_MAX = 255
_TAG_SAFE = re.compile(r"[\w .:/=+\-@]*", re.ASCII)


def open_store(target: AwsTarget, *, base_dir: Path, client: Any | None = None) -> AwsStore:
    """The store for ``target``; ``client`` replaces the boto3 client built from it."""
    del base_dir  # nothing of an AWS target is a local path
    if target.endpoint_url:
        require_tls(f"{_name(target)}: endpoint_url", target.endpoint_url)
    if client is None:
        with translated(_name(target), "connect"):
            client = _build_client(target)
    return AwsStore(target, client)


def _name(target: AwsTarget) -> str:
    return f"aws:{target.secret_id}" + (f"#{target.field}" if target.field else "")


def _build_client(target: AwsTarget) -> SecretsManagerClient:
    """The process's Secrets Manager client for the target's settings (shared, thread-safe)."""
    client: SecretsManagerClient = aws_client(
        "secretsmanager",
        region=target.region,
        endpoint_url=target.endpoint_url,
        profile=target.profile,
        role_arn=target.role_arn,
        attempts=4,
        connect_timeout=5,
        read_timeout=15,
    )
    return client


# --------------------------------------------------------------------------- stamps in tags


def encode_stamp(stamp: Stamp) -> tuple[str, str]:
    """The tag (key, value) that carries ``stamp``; ValueError if it cannot fit."""
    key_id = stamp.key_id
    if not _TAG_SAFE.fullmatch(key_id):
        # vendor ids are opaque: keep to the characters every AWS service accepts in tags
        key_id = "b64:" + base64.urlsafe_b64encode(key_id.encode()).decode()
    at = format_time(stamp.promoted_at) if stamp.promoted_at else "-"
    value = f"fp={stamp.fingerprint} at={at} key={key_id}"
    if len(value) > _TAG_VALUE_MAX:
        raise ValueError(f"key id {stamp.key_id[:40]!r}... is too long for a tag")
    return TAG_PREFIX + stamp.attempt, value


def decode_stamp(attempt: str, value: str) -> Stamp | None:
    """Inverse of :func:`encode_stamp`; ``None`` for a tag that is not a stamp."""
    parts = dict(p.split("=", 1) for p in value.split(" ", 2) if "=" in p)
    if not {"fp", "at", "key"} <= parts.keys():
        return None
    key_id, at = parts["key"], parts["at"]
    if key_id.startswith("b64:"):
        key_id = base64.urlsafe_b64decode(key_id[4:]).decode()
    return Stamp(key_id, parts["fp"], attempt, None if at == "-" else parse_time(at))


# --------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class _View:
    """One ``DescribeSecret``: the labels of each version, and the tags."""

    stages: dict[str, list[str]]
    tags: dict[str, str]

    def labelled(self, label: str) -> str | None:
        return next((v for v, labels in self.stages.items() if label in labels), None)

    def stamp(self, version: str) -> Stamp | None:
        value = self.tags.get(TAG_PREFIX + version)
        return None if value is None else decode_stamp(version, value)

    @property
    def revision(self) -> str:
        return f"{self.labelled(CURRENT) or '-'}/{self.labelled(PENDING) or '-'}"

    def current_and_pending(self) -> tuple[str | None, str | None]:
        """Version ids as the rotator sees them: our unpromoted first version is only pending."""
        current, pending = self.labelled(CURRENT), self.labelled(PENDING)
        if current is not None and current == pending:
            stamp = self.stamp(current)
            if len(self.stages) == 1 and stamp is not None and stamp.promoted_at is None:
                return None, pending
            return current, None  # promoted, or a promote cut short: consumers read it
        return current, pending


class AwsStore:
    """One secret (or one ``field`` of a JSON secret) in AWS Secrets Manager."""

    def __init__(self, target: AwsTarget, client: SecretsManagerClient) -> None:
        self.target = target
        self._client = client
        self._id = target.secret_id
        self._name = _name(target)
        self._codec = FieldCodec(self._name, target.field, json_style="compact")

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"AwsStore({self._name})"

    def read(self) -> TargetState:
        for _ in range(3):
            view = self._describe("read")
            if view is None:
                return TargetState(None, None)
            current_id, pending_id = view.current_and_pending()
            current = self._version(view, CURRENT) if current_id else (None, None)
            pending = self._version(view, PENDING) if pending_id else (None, None)
            # labels may move between the describe and the reads: return only a consistent picture
            if (current[0], pending[0]) == (current_id, pending_id):
                return TargetState(current[1], pending[1], view.revision)
        raise StoreConflict(self._name, "read: the secret kept changing while being read")

    def stage(self, value: Secret, stamp: Stamp, *, expected: str | None) -> None:
        view = self._describe("stage")
        if view is not None:
            labels = set(view.stages.get(stamp.attempt, ()))
            mine = view.stamp(stamp.attempt)
            if mine and mine.fingerprint == stamp.fingerprint and {CURRENT, PENDING} & labels:
                return
        if expected is not None and (view.revision if view else None) != expected:
            raise StoreConflict(self._name, "stage: the secret changed since it was read")
        try:
            key, tag = encode_stamp(stamp)
        except ValueError as exc:
            raise StoreError(self._name, f"stage: {exc}") from None
        base: str | None = None
        if not self._codec.whole and view is not None and view.labelled(CURRENT) is not None:
            version_id, base = self._get(CURRENT, "stage")
            if expected is not None and version_id != view.labelled(CURRENT):
                raise StoreConflict(self._name, "stage: the secret changed since it was read")
        text = self._codec.merge(base, value.reveal(), "stage")
        with translated(self._name, "stage", conflict={"ResourceExistsException"}):
            if view is None:
                self._create(key, tag)
            else:
                self._client.tag_resource(SecretId=self._id, Tags=[{"Key": key, "Value": tag}])
            self._client.put_secret_value(
                SecretId=self._id,
                ClientRequestToken=stamp.attempt,
                SecretString=text,
                VersionStages=[PENDING],
            )
        if view is not None:
            keep = {v for v, labels in view.stages.items() if {CURRENT, PREVIOUS} & set(labels)}
            self._prune(view, keep | {stamp.attempt}, "stage")

    def promote(self, attempt: str, promoted_at: datetime) -> None:
        view = self._describe("promote")
        if view is None or attempt not in view.stages:
            raise StoreNotFound(self._name, f"promote: no version written by attempt {attempt}")
        labels, stamp = view.stages[attempt], view.stamp(attempt)
        current_id = view.labelled(CURRENT)
        if CURRENT in labels and PENDING not in labels and stamp and stamp.promoted_at:
            return
        # another writer moving AWSCURRENT meanwhile makes RemoveFromVersionId invalid
        with translated(self._name, "promote", conflict={"InvalidParameterException"}):
            if current_id != attempt:
                old = {"RemoveFromVersionId": current_id} if current_id else {}
                self._client.update_secret_version_stage(
                    SecretId=self._id, VersionStage=CURRENT, MoveToVersionId=attempt, **old
                )
            if stamp is not None and stamp.promoted_at is None:
                key, tag = encode_stamp(replace(stamp, promoted_at=promoted_at))
                self._client.tag_resource(SecretId=self._id, Tags=[{"Key": key, "Value": tag}])
            if PENDING in labels:
                self._client.update_secret_version_stage(
                    SecretId=self._id, VersionStage=PENDING, RemoveFromVersionId=attempt
                )
        # the old current now holds AWSPREVIOUS; the old previous holds nothing any more
        keep = {attempt, current_id or attempt, view.labelled(PENDING) or attempt}
        self._prune(view, keep, "promote")

    def check_access(self) -> None:
        view = self._describe("check access")
        if view is None:
            raise StoreNotFound(self._name, "check access: no such secret")
        current_id = view.labelled(CURRENT)
        with translated(self._name, "check access"):
            if current_id is not None:
                version_id, text = self._get(CURRENT, "check access")
                if PENDING not in view.stages[current_id]:
                    self._client.put_secret_value(
                        SecretId=self._id,
                        ClientRequestToken=version_id,
                        SecretString=text,
                        VersionStages=[CURRENT],
                    )
            now = format_time(datetime.now(UTC))
            self._client.tag_resource(SecretId=self._id, Tags=[{"Key": CHECK_TAG, "Value": now}])

    # ----------------------------------------------------------------- helpers

    def _describe(self, action: str) -> _View | None:
        """The secret's labels and tags; ``None`` when it does not exist."""
        from botocore.exceptions import ClientError

        with translated(self._name, action):
            try:
                out = self._client.describe_secret(SecretId=self._id)
            except ClientError as exc:
                if classify(exc.response).code in NOT_FOUND:
                    return None
                raise
        if out.get("DeletedDate") is not None:
            raise StoreNotFound(self._name, f"{action}: the secret is scheduled for deletion")
        return _View(
            stages={k: list(v) for k, v in out.get("VersionIdsToStages", {}).items()},
            tags={t.get("Key", ""): t.get("Value", "") for t in out.get("Tags", [])},
        )

    def _create(self, key: str, tag: str) -> None:
        if self._id.startswith("arn:"):
            raise StoreNotFound(self._name, "stage: no such secret (an ARN cannot be created)")
        kms: dict[str, Any] = {"KmsKeyId": self.target.kms_key_id} if self.target.kms_key_id else {}
        self._client.create_secret(Name=self._id, Tags=[{"Key": key, "Value": tag}], **kms)

    def _get(self, label: str, action: str) -> tuple[str, str]:
        """(VersionId, text) of the version holding ``label``."""
        with translated(self._name, action):
            out = self._client.get_secret_value(SecretId=self._id, VersionStage=label)
        if "SecretString" not in out:
            raise StoreFormatError(self._name, f"{action}: the {label} version is binary")
        return out["VersionId"], out["SecretString"]

    def _version(self, view: _View, label: str) -> tuple[str, StoredVersion | None]:
        version_id, text = self._get(label, "read")
        value = self._codec.read(text, "read")
        if value is None:
            return version_id, None
        return version_id, StoredVersion(version_id, Secret(value), view.stamp(version_id))

    def _prune(self, view: _View, keep: set[str], action: str) -> None:
        """Remove the stamps of versions that no longer hold a label worth stamping."""
        stale = [
            k
            for k in view.tags
            if k.startswith(TAG_PREFIX) and k != CHECK_TAG and k[len(TAG_PREFIX) :] not in keep
        ]
        if stale:
            with translated(self._name, action):
                self._client.untag_resource(SecretId=self._id, TagKeys=stale)


# --------------------------------------------------------------------------- errors


@contextmanager
def translated(name: str, action: str, *, conflict: set[str] | None = None) -> Iterator[None]:
    """Raise boto3 and botocore errors as :class:`StoreError` kinds naming ``name``.

    Messages carry the AWS error code and message (neither echoes a secret
    value). botocore's own errors are named by class only: a parameter
    validation message may quote a parameter.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        raise _from_client_error(name, action, exc.response, conflict or set()) from None
    except BotoCoreError as exc:
        raise _from_botocore_error(name, action, exc) from None


def _from_client_error(name: str, action: str, response: Any, conflict: set[str]) -> StoreError:
    failure = classify(response)
    text = failure.text(action)
    if failure.code in conflict:
        return StoreConflict(name, text)
    if failure.kind is Kind.NOT_FOUND:
        return StoreNotFound(name, text)
    if failure.kind is Kind.DENIED:
        return StoreAccessDenied(name, text)
    if failure.kind.transient:
        return StoreUnavailable(name, text)
    return StoreError(name, text)


def _from_botocore_error(name: str, action: str, exc: Exception) -> StoreError:
    kind, name_of = classify_botocore(exc), type(exc).__name__
    if kind in (BotoKind.NOT_SENT, BotoKind.LOST):
        return StoreUnavailable(name, f"{action}: cannot reach Secrets Manager ({name_of})")
    if kind is BotoKind.CREDENTIALS:
        return StoreAccessDenied(name, f"{action}: no usable AWS credentials ({name_of})")
    return StoreError(name, f"{action}: {name_of}")
