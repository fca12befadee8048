"""AWS Secrets Manager store, beyond the contract suite: labels, tokens, tags, errors.

Runs on moto in process (the ``aws_harness`` fixture) and, for ``endpoint_url``,
on the moto server; botocore's Stubber stands in only for throttling, which
moto cannot be made to answer.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.stub import Stubber
from moto.core import set_initial_no_auth_action_count

from providers.aws import AwsStore, decode_stamp, encode_stamp, open_store, translated
from rotator.abc import Stamp
from rotator.errors import (
    ConfigError,
    StoreAccessDenied,
    StoreConflict,
    StoreError,
    StoreFormatError,
    StoreNotFound,
    StoreUnavailable,
)
from rotator.secret import Secret
from tests.harnesses.aws import REGION, AwsHarness

CANARY = f"cny{uuid.uuid4().hex[:12]}"
NOW = datetime(2025, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)


def _value(tag: str) -> Secret:
    return Secret(f"{CANARY}_{tag}_{uuid.uuid4().hex}")


def _stage(store: AwsStore, value: Secret, *, key_id: str = "key_1") -> Stamp:
    stamp = Stamp(key_id, value.fingerprint, str(uuid.uuid4()))
    store.stage(value, stamp, expected=store.read().revision)
    return stamp


def _rotate(store: AwsStore, value: Secret) -> Stamp:
    stamp = _stage(store, value)
    store.promote(stamp.attempt, NOW)
    return stamp


def _labels(h: AwsHarness, store: AwsStore) -> dict[str, list[str]]:
    out = h.client.describe_secret(SecretId=store.target.secret_id)
    return {k: sorted(v) for k, v in out.get("VersionIdsToStages", {}).items()}


def _tags(h: AwsHarness, store: AwsStore) -> dict[str, str]:
    out = h.client.describe_secret(SecretId=store.target.secret_id)
    return {t["Key"]: t["Value"] for t in out.get("Tags", [])}


@pytest.fixture
def env_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials in the default chain, and no shared config from the machine."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))


# --------------------------------------------------------------------------- versions and labels


def test_same_attempt_twice_is_one_version(aws_harness: AwsHarness) -> None:
    """Re-staging an attempt whose stamp tag was lost still makes one version (the request token)."""
    store = aws_harness.make_store()
    aws_harness.external_write(store, _value("old").reveal())
    value = _value("new")
    stamp = _stage(store, value)
    aws_harness.client.untag_resource(SecretId=store.target.secret_id, TagKeys=[f"rotator:{stamp.attempt}"])
    store.stage(value, stamp, expected=None)  # the shortcut cannot see it: AWS must dedupe
    labels = _labels(aws_harness, store)
    assert len(labels) == 2
    assert labels[stamp.attempt] == ["AWSPENDING"]
    pending = store.read().pending
    assert pending is not None and pending.version == stamp.attempt and pending.stamp == stamp


def test_promote_leaves_awsprevious_on_the_old_version(aws_harness: AwsHarness) -> None:
    """After promote the new version holds AWSCURRENT only and the old one AWSPREVIOUS."""
    store = aws_harness.make_store()
    first = _rotate(store, _value("one"))
    second = _rotate(store, _value("two"))
    assert _labels(aws_harness, store) == {
        first.attempt: ["AWSPREVIOUS"],
        second.attempt: ["AWSCURRENT"],
    }


def test_first_version_is_pending_until_promoted(aws_harness: AwsHarness) -> None:
    """AWS makes a new secret's first version current at once; it reads as pending until promote."""
    store = aws_harness.make_store()
    value = _value("first")
    stamp = _stage(store, value)
    assert _labels(aws_harness, store) == {stamp.attempt: ["AWSCURRENT", "AWSPENDING"]}
    assert aws_harness.read_raw(store) == value.reveal()
    state = store.read()
    assert state.current is None and state.pending is not None
    assert state.pending.value == value
    store.promote(stamp.attempt, NOW)
    assert _labels(aws_harness, store) == {stamp.attempt: ["AWSCURRENT"]}
    state = store.read()
    assert state.pending is None and state.current is not None
    assert state.current.stamp == Stamp("key_1", value.fingerprint, stamp.attempt, NOW)


def test_promote_cut_short_reads_current_and_finishes(aws_harness: AwsHarness) -> None:
    """A promote stopped after the label move reads as current; promoting again completes it."""
    store = aws_harness.make_store()
    old = _rotate(store, _value("old"))
    value = _value("new")
    stamp = _stage(store, value)
    aws_harness.client.update_secret_version_stage(  # what promote does first, then "crashes"
        SecretId=store.target.secret_id,
        VersionStage="AWSCURRENT",
        MoveToVersionId=stamp.attempt,
        RemoveFromVersionId=old.attempt,
    )
    state = store.read()
    assert state.pending is None and state.current is not None
    assert state.current.value == value and state.current.stamp == stamp
    store.promote(stamp.attempt, NOW)
    assert _labels(aws_harness, store) == {
        old.attempt: ["AWSPREVIOUS"],
        stamp.attempt: ["AWSCURRENT"],
    }
    current = store.read().current
    assert current is not None and current.stamp is not None and current.stamp.promoted_at == NOW


def test_reads_name_the_stage(aws_harness: AwsHarness) -> None:
    """Every GetSecretValue names a VersionStage, so moto's stale default version is never read."""
    seen: list[dict[str, Any]] = []
    aws_harness.client.meta.events.register(
        "provide-client-params.secrets-manager.GetSecretValue",
        lambda params, **_: seen.append(dict(params)),
    )
    store = aws_harness.make_store(field="api_key")
    old, new = _value("old"), _value("new")
    _rotate(store, old)
    _rotate(store, new)
    current = store.read().current
    assert current is not None and current.value == new
    assert seen and all(p.get("VersionStage") in {"AWSCURRENT", "AWSPENDING"} for p in seen)
    other = boto3.client("secretsmanager", region_name=REGION)
    unnamed = other.get_secret_value(SecretId=store.target.secret_id)
    assert json.loads(unnamed["SecretString"])["api_key"] == old.reveal()  # moto's stale default


def test_promote_is_idempotent(aws_harness: AwsHarness) -> None:
    """Promoting the same attempt twice changes neither labels nor promoted_at."""
    store = aws_harness.make_store()
    aws_harness.external_write(store, _value("old").reveal())
    stamp = _rotate(store, _value("new"))
    before = (_labels(aws_harness, store), _tags(aws_harness, store))
    store.promote(stamp.attempt, datetime.now(UTC))
    assert (_labels(aws_harness, store), _tags(aws_harness, store)) == before


# --------------------------------------------------------------------------- stamps


def test_stamps_live_in_tags_never_in_the_value(aws_harness: AwsHarness) -> None:
    """The stamp is a tag; the value holds the key alone; no metadata call shows the value."""
    store = aws_harness.make_store()
    value = _value("key")
    stamp = _rotate(store, value)
    assert aws_harness.read_raw(store) == value.reveal()
    tags = _tags(aws_harness, store)
    assert decode_stamp(stamp.attempt, tags[f"rotator:{stamp.attempt}"]) == Stamp(
        "key_1", value.fingerprint, stamp.attempt, NOW
    )
    sid = store.target.secret_id
    metadata = [
        aws_harness.client.describe_secret(SecretId=sid),
        aws_harness.client.list_secret_version_ids(SecretId=sid),
        aws_harness.client.list_secrets(),
    ]
    whole = json.dumps(metadata, default=str)
    assert CANARY not in whole and value.fingerprint in whole
    assert CANARY not in repr(store) and CANARY not in repr(store.read())


def test_stale_stamps_are_pruned(aws_harness: AwsHarness) -> None:
    """After three rotations only the current and previous versions keep a stamp tag."""
    store = aws_harness.make_store()
    aws_harness.client.create_secret(
        Name=store.target.secret_id, SecretString="x", Tags=[{"Key": "team", "Value": "payments"}]
    )
    stamps = [_rotate(store, _value(str(i))) for i in range(3)]
    tags = _tags(aws_harness, store)
    assert set(tags) == {"team", f"rotator:{stamps[1].attempt}", f"rotator:{stamps[2].attempt}"}


@pytest.mark.parametrize("key_id", ["key_01HZX", "k/1@a.b:c=d+e-f g", 'odd "id", {json}'])
def test_stamp_tag_round_trip(key_id: str) -> None:
    """Any key id survives the tag encoding, within AWS's characters and lengths."""
    stamp = Stamp(key_id, "0123456789ab", str(uuid.uuid4()), NOW)
    key, value = encode_stamp(stamp)
    assert len(key) <= 127 and len(value) <= 255
    assert all(c.isalnum() or c in " +-=._:/@" for c in key + value)
    assert decode_stamp(stamp.attempt, value) == stamp


def test_key_id_too_long_for_a_tag(aws_harness: AwsHarness) -> None:
    """A key id that cannot fit a tag fails the stage before anything is written."""
    store = aws_harness.make_store()
    value = _value("key")
    with pytest.raises(StoreError) as info:
        store.stage(value, Stamp("k" * 300, value.fingerprint, str(uuid.uuid4())), expected=None)
    assert store.name in str(info.value) and CANARY not in str(info.value)
    assert store.read().exists is False


# --------------------------------------------------------------------------- field


def test_field_stage_merges_into_the_pending_version(aws_harness: AwsHarness) -> None:
    """The pending version is the current JSON with the field set; current stays as it was."""
    store = aws_harness.make_store(field="API_KEY")
    original = {"API_KEY": "old-value", "DB_USER": "app", "PORT": 5432}
    aws_harness.external_write(store, json.dumps(original))
    value = _value("new")
    stamp = _stage(store, value)
    pending = aws_harness.client.get_secret_value(SecretId=store.target.secret_id, VersionStage="AWSPENDING")
    assert pending["VersionId"] == stamp.attempt
    assert json.loads(pending["SecretString"]) == {**original, "API_KEY": value.reveal()}
    assert json.loads(aws_harness.read_raw(store) or "") == original


def test_field_absent_or_not_a_string(aws_harness: AwsHarness) -> None:
    """A JSON secret without the field holds no key; a non-string field is a format error."""
    store = aws_harness.make_store(field="API_KEY")
    aws_harness.external_write(store, json.dumps({"OTHER": "x"}))
    state = store.read()
    assert state.current is None and state.revision is not None
    aws_harness.external_write(store, json.dumps({"API_KEY": 12345}))
    with pytest.raises(StoreFormatError):
        store.read()


def test_kms_key_is_used_on_create(aws_harness: AwsHarness) -> None:
    """A new secret is created with the target's kms_key_id."""
    target = aws_harness.target(f"kms/{uuid.uuid4().hex[:8]}", kms_key_id="alias/rotator")
    store = open_store(target, base_dir=Path.cwd(), client=aws_harness.client)
    _rotate(store, _value("key"))
    out = aws_harness.client.describe_secret(SecretId=target.secret_id)
    assert out["KmsKeyId"] == "alias/rotator"


# --------------------------------------------------------------------------- check_access


def test_check_access_writes_no_version(aws_harness: AwsHarness) -> None:
    """check_access succeeds on a writable secret, adds no version and leaves the value alone."""
    store = aws_harness.make_store()
    _rotate(store, _value("one"))
    raw, labels = aws_harness.read_raw(store), _labels(aws_harness, store)
    store.check_access()
    assert aws_harness.read_raw(store) == raw and _labels(aws_harness, store) == labels
    assert "rotator:checked" in _tags(aws_harness, store)


def test_check_access_needs_write(aws_harness: AwsHarness) -> None:
    """A principal that may read the secret but not write it fails check_access."""
    store = aws_harness.make_store()
    _rotate(store, _value("one"))
    iam = boto3.client("iam", region_name=REGION)
    iam.create_user(UserName="reader")
    read_only = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue"],
                "Resource": "*",
            }
        ],
    }
    iam.put_user_policy(UserName="reader", PolicyName="ro", PolicyDocument=json.dumps(read_only))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    client = boto3.client(
        "secretsmanager",
        region_name=REGION,
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
    )
    reader = open_store(store.target, base_dir=Path.cwd(), client=client)
    set_initial_no_auth_action_count(0)(reader.read)()  # reading is allowed
    with pytest.raises(StoreAccessDenied) as info:
        set_initial_no_auth_action_count(0)(reader.check_access)()
    assert "PutSecretValue" in str(info.value) and store.name in str(info.value)


# --------------------------------------------------------------------------- errors


def test_not_found_kinds(aws_harness: AwsHarness) -> None:
    """Missing, scheduled-for-deletion and ARN-named secrets give StoreNotFound where AWS would."""
    store = aws_harness.make_store()
    with pytest.raises(StoreNotFound):
        store.promote(str(uuid.uuid4()), NOW)
    with pytest.raises(StoreNotFound):
        store.check_access()
    _rotate(store, _value("key"))
    aws_harness.client.delete_secret(SecretId=store.target.secret_id, RecoveryWindowInDays=7)
    for call in (store.read, store.check_access, lambda: _stage(store, _value("x"))):
        with pytest.raises(StoreNotFound, match="scheduled for deletion"):
            call()
    with pytest.raises(StoreNotFound) as info, translated(store.name, "read"):
        aws_harness.client.get_secret_value(SecretId=store.target.secret_id)
    assert store.name in str(info.value)
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:missing-AbCdEf"
    by_arn = open_store(aws_harness.target(arn), base_dir=Path.cwd(), client=aws_harness.client)
    with pytest.raises(StoreNotFound):
        by_arn.stage(_value("x"), Stamp("k", "f", str(uuid.uuid4())), expected=None)


def test_denied_kinds(aws_harness: AwsHarness) -> None:
    """A principal without permissions gets StoreAccessDenied from every operation."""
    store = aws_harness.make_store()
    _rotate(store, _value("key"))
    denied = aws_harness.denied_store(store)
    value = _value("x")
    for call in (
        denied.read,
        denied.check_access,
        lambda: denied.stage(value, Stamp("k", value.fingerprint, str(uuid.uuid4())), expected=None),
        lambda: denied.promote(str(uuid.uuid4()), NOW),
    ):
        with pytest.raises(StoreAccessDenied) as info:
            call()
        assert denied.name in str(info.value) and CANARY not in str(info.value)


def test_unknown_credentials_are_denied(aws_harness: AwsHarness) -> None:
    """An access key moto's IAM does not know is StoreAccessDenied, not a generic error."""
    client = boto3.client(
        "secretsmanager",
        region_name=REGION,
        aws_access_key_id="AKIAUNKNOWNUNKNOWN00",
        aws_secret_access_key="nope",
    )
    store = open_store(aws_harness.target("any"), base_dir=Path.cwd(), client=client)
    with pytest.raises(StoreAccessDenied, match="InvalidClientTokenId"):
        set_initial_no_auth_action_count(0)(store.read)()


@pytest.mark.parametrize(("code", "status"), [("ThrottlingException", 400), ("InternalServiceError", 500)])
def test_throttling_and_server_errors_are_transient(code: str, status: int) -> None:
    """Throttling and 5xx answers are StoreUnavailable (a Transient), naming the secret."""
    client = boto3.client(
        "secretsmanager", region_name=REGION, aws_access_key_id="a", aws_secret_access_key="b"
    )
    store = open_store(_target("throttled"), base_dir=Path.cwd(), client=client)
    with Stubber(client) as stub:
        stub.add_client_error("describe_secret", code, "slow down", http_status_code=status)
        with pytest.raises(StoreUnavailable) as info:
            store.read()
        stub.assert_no_pending_responses()
    assert "aws:throttled" in str(info.value) and code in str(info.value)


def test_unreachable_endpoint_is_transient(env_credentials: None) -> None:
    """A refused connection is StoreUnavailable."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = boto3.client(
        "secretsmanager",
        region_name=REGION,
        endpoint_url=f"http://127.0.0.1:{port}",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    store = open_store(_target("gone"), base_dir=Path.cwd(), client=client)
    with pytest.raises(StoreUnavailable, match="EndpointConnectionError"):
        store.read()


def test_concurrent_promote_is_a_conflict(aws_harness: AwsHarness) -> None:
    """AWSCURRENT moved by someone else between our describe and our move is StoreConflict."""
    store = aws_harness.make_store()
    aws_harness.external_write(store, _value("old").reveal())
    stamp = _stage(store, _value("new"))
    racing = _RacingClient(aws_harness, store)
    other = open_store(store.target, base_dir=Path.cwd(), client=racing)
    with pytest.raises(StoreConflict, match="promote"):
        other.promote(stamp.attempt, NOW)
    state = store.read()
    assert state.pending is not None and state.pending.version == stamp.attempt
    assert state.current is not None and state.current.value.reveal() == "someone else"


class _RacingClient:
    """The real client, with another writer's PutSecretValue just before UpdateSecretVersionStage."""

    def __init__(self, harness: AwsHarness, store: AwsStore) -> None:
        self._harness, self._store = harness, store

    def __getattr__(self, name: str) -> Any:
        if name == "update_secret_version_stage":
            self._harness.external_write(self._store, "someone else")
        return getattr(self._harness.client, name)


# --------------------------------------------------------------------------- client building


def _target(secret_id: str, **extra: Any) -> Any:
    from rotator.spec import AwsTarget

    return AwsTarget.model_validate({"type": "aws", "secret_id": secret_id, "region": REGION, **extra})


def test_endpoint_url_against_a_moto_server(moto_server: str, env_credentials: None) -> None:
    """A target with endpoint_url builds its own client and rotates on the moto server."""
    store = open_store(_target(f"e2e/{uuid.uuid4().hex[:8]}", endpoint_url=moto_server), base_dir=Path.cwd())
    value = _value("served")
    stamp = _rotate(store, value)
    client = boto3.client("secretsmanager", region_name=REGION, endpoint_url=moto_server)
    out = client.get_secret_value(SecretId=store.target.secret_id, VersionStage="AWSCURRENT")
    assert out["VersionId"] == stamp.attempt and out["SecretString"] == value.reveal()


def test_endpoint_url_must_be_tls_unless_loopback() -> None:
    """Plain http is refused for a non-loopback endpoint_url."""
    # validate refuses it already; the store checks again for specs built in code
    plain = _target("x").model_copy(update={"endpoint_url": "http://secrets.example.com"})
    with pytest.raises(ConfigError, match="endpoint_url"):
        open_store(plain, base_dir=Path.cwd())


def test_missing_profile_is_denied() -> None:
    """A profile the machine does not have is StoreAccessDenied naming the store."""
    with pytest.raises(StoreAccessDenied, match="ProfileNotFound") as info:
        open_store(_target("x", profile=f"nope-{uuid.uuid4().hex}"), base_dir=Path.cwd())
    assert "aws:x" in str(info.value)


@pytest.fixture
def role_setup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """In moto: a user who may only assume a role, the role that may use secrets; yields its ARN."""
    from moto import mock_aws

    with mock_aws():
        iam = boto3.client("iam", region_name=REGION)
        iam.create_user(UserName="deployer")
        assume = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="deployer", PolicyName="a", PolicyDocument=json.dumps(assume))
        user = "arn:aws:iam::123456789012:user/deployer"
        trust = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"AWS": user}}],
        }
        role = iam.create_role(RoleName="rotator", AssumeRolePolicyDocument=json.dumps(trust))
        secrets = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "secretsmanager:*", "Resource": "*"}],
        }
        iam.put_role_policy(RoleName="rotator", PolicyName="s", PolicyDocument=json.dumps(secrets))
        key = iam.create_access_key(UserName="deployer")["AccessKey"]
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        yield role["Role"]["Arn"]


def test_role_arn_is_assumed(role_setup: str) -> None:
    """With role_arn the store works with the role's rights; without it the user's are refused."""

    def rotate_as(**extra: Any) -> None:
        store = open_store(_target(f"r/{uuid.uuid4().hex[:8]}", **extra), base_dir=Path.cwd())
        _rotate(store, _value("key"))

    set_initial_no_auth_action_count(0)(rotate_as)(role_arn=role_setup)
    with pytest.raises(StoreAccessDenied):
        set_initial_no_auth_action_count(0)(rotate_as)()
