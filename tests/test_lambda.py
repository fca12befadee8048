"""The Lambda handler against a moto server (Secrets Manager, S3) and the vendor emulator.

Secrets Manager drives a rotation through four steps and retries any of them; here each
step is called twice, in order, as Secrets Manager would after a lost answer.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from rotator.abc import parse_time
from rotator.engine.lease_dynamodb import DynamoDBLease
from rotator.engine.runner import Engine
from rotator.errors import ConfigError
from rotator.lambda_handler import (
    RotationStepFailed,
    find_key,
    handler,
    lease_for,
    load_spec,
    same_secret,
    settings,
)
from rotator.sandbox.emulator import EmulatorServer
from rotator.spec import AwsTarget, load_rotation_file, parse_rotation_file
from tests.e2e_helpers import ADMIN_ENV, agent_keys, journal, read_dotenv_key, rotation_yaml

REGION = "us-east-1"
SCHEDULED = {
    "version": "0",
    "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
    "detail-type": "Scheduled Event",
    "source": "aws.events",
    "account": "123456789012",
    "time": "2026-01-01T03:00:00Z",
    "region": REGION,
    "resources": ["arn:aws:events:us-east-1:123456789012:rule/rotator-schedule"],
    "detail": {},
}
STEPS = ("createSecret", "setSecret", "testSecret", "finishSecret")


@pytest.fixture
def env(tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Fake AWS credentials, fast retries, the admin key and a state dir under the test's tmp."""
    values = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "ROTATOR_STATE_DIR": str(tmp_path / "state"),
        "ROTATOR_RETRY_INITIAL": "0.01",
        "ROTATOR_PROBE_TIMEOUT": "5",
        ADMIN_ENV: emulator.emulator.bootstrap_workspace_key(),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    for name in (
        "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION", "ROTATOR_FILE", "ROTATOR_FILE_S3",
        "ROTATOR_FILE_CONTENT", "ROTATOR_LEASE_TABLE", "AWS_LAMBDA_FUNCTION_NAME",
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    return values


def _spec_text(emulator: EmulatorServer, moto: str, secret: str, *, first: str = "aws") -> str:
    aws = f"{{type: aws, secret_id: {secret}, region: {REGION}, endpoint_url: '{moto}', field: ADJUDON_API_KEY}}"
    file = "{type: file, path: secrets/payments.env, format: dotenv, field: ADJUDON_API_KEY}"
    targets = [aws, file] if first == "aws" else [file, aws]
    return rotation_yaml(
        defaults={"verify": "{drain: 1s, propagation: 0s, timeout: 60s}"},
        issuers={"emu": {"type": "adjudon", "base_url": emulator.url, "credential": f"{{env: {ADMIN_ENV}}}"}},
        keys={"payments": {"issuer": "emu", "kind": "agent", "agent_id": "payments", "targets": targets}},
    )


@pytest.fixture
def rotation(
    tmp_path: Path,
    emulator: EmulatorServer,
    moto_server: str,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Path, str]]:
    """A rotation file (Secrets Manager first, a dotenv file second) and its secret's name."""
    secret = f"prod/payments/{uuid.uuid4().hex[:8]}"
    (tmp_path / "secrets").mkdir()
    path = tmp_path / "rotations.yaml"
    path.write_text(_spec_text(emulator, moto_server, secret))
    monkeypatch.setenv("ROTATOR_FILE", str(path))
    yield path, secret
    with contextlib.suppress(ClientError):
        _sm(moto_server).delete_secret(SecretId=secret, ForceDeleteWithoutRecovery=True)


def _sm(moto: str) -> Any:
    return boto3.client("secretsmanager", region_name=REGION, endpoint_url=moto)


def _stage_value(moto: str, secret: str, stage: str) -> tuple[str, str] | None:
    """(VersionId, key) of the version holding ``stage``, read with an explicit VersionStage."""
    try:
        out = _sm(moto).get_secret_value(SecretId=secret, VersionStage=stage)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceNotFoundException":
            raise
        return None
    return out["VersionId"], json.loads(out["SecretString"])["ADJUDON_API_KEY"]


def _step(step: str, arn: str, token: str) -> dict[str, Any]:
    return handler({"Step": step, "SecretId": arn, "ClientRequestToken": token}, None)


def test_rotation_steps_each_twice_then_a_scheduled_pass_revokes(
    tmp_path: Path, emulator: EmulatorServer, moto_server: str, rotation: tuple[Path, str]
) -> None:
    """Four steps, each twice: the new key ends AWSCURRENT and in the file; the old one lives until drained."""
    _, secret = rotation
    first = handler(SCHEDULED, None)
    assert first["ok"] and first["results"][0]["steps"] == ["mint", "stage", "promote"], first
    old_version, old = _stage_value(moto_server, secret, "AWSCURRENT") or ("", "")
    assert read_dotenv_key(tmp_path / "secrets/payments.env") == old
    arn = _sm(moto_server).describe_secret(SecretId=secret)["ARN"]
    token = str(uuid.uuid4())
    minted = len(agent_keys(emulator))

    def twice(step: str) -> None:
        _step(step, arn, token)
        events = journal(tmp_path)
        versions = _sm(moto_server).describe_secret(SecretId=secret)["VersionIdsToStages"]
        again = _step(step, arn, token)  # Secrets Manager's retry
        assert again["step"] == step and again["key"] == "payments"
        assert journal(tmp_path) == events, f"{step} repeated wrote to the journal"
        assert _sm(moto_server).describe_secret(SecretId=secret)["VersionIdsToStages"] == versions
        assert len(agent_keys(emulator)) == minted + 1

    twice("createSecret")
    pending = _stage_value(moto_server, secret, "AWSPENDING")
    assert pending is not None and pending[0] == token and pending[1] != old
    new = pending[1]
    assert _stage_value(moto_server, secret, "AWSCURRENT") == (old_version, old)
    assert read_dotenv_key(tmp_path / "secrets/payments.env") == old

    twice("setSecret")
    engine = Engine(load_rotation_file(rotation[0]), base_dir=tmp_path, settings=settings())
    file_state = engine.stores("payments")[1].read()
    assert file_state.pending is not None and file_state.pending.value.reveal() == new
    assert read_dotenv_key(tmp_path / "secrets/payments.env") == old  # staged, not yet served

    twice("testSecret")
    twice("finishSecret")
    assert _stage_value(moto_server, secret, "AWSCURRENT") == (token, new)
    assert _stage_value(moto_server, secret, "AWSPENDING") is None
    assert _stage_value(moto_server, secret, "AWSPREVIOUS") == (old_version, old)
    assert read_dotenv_key(tmp_path / "secrets/payments.env") == new
    assert emulator.emulator.key_accepted(new) and emulator.emulator.key_accepted(old)
    assert "revoked" not in [e["event"] for e in journal(tmp_path)]

    deadline = time.monotonic() + 20
    while True:  # scheduled passes: waiting while the old key drains, then it is revoked
        answer = handler(SCHEDULED, None)
        result = answer["results"][0]
        if result["steps"]:
            break
        assert result["outcome"] == "waiting" and emulator.emulator.key_accepted(old), result
        assert time.monotonic() < deadline, "the old key never drained"
        time.sleep(0.2)
    assert result["steps"] == ["revoke"], result
    assert not emulator.emulator.key_accepted(old) and emulator.emulator.key_accepted(new)
    assert _stage_value(moto_server, secret, "AWSCURRENT") == (token, new)
    events = journal(tmp_path)
    promoted = [e for e in events if e["event"] == "promoted"][-1]["details"]["promoted_at"]
    revoked = [e for e in events if e["event"] == "revoked"][-1]["ts"]
    assert (parse_time(revoked) - parse_time(promoted)).total_seconds() >= 1.0  # the drain
    assert sum(e["event"] == "minted" for e in events) == 2
    for leaked in (old, new):
        assert leaked not in json.dumps(answer) and leaked not in json.dumps(events)


def test_create_secret_retried_after_finish_mints_nothing(
    tmp_path: Path, emulator: EmulatorServer, moto_server: str, rotation: tuple[Path, str]
) -> None:
    """A createSecret repeated after the rotation finished finds its token current and mints nothing."""
    _, secret = rotation
    handler(SCHEDULED, None)
    token = str(uuid.uuid4())
    for step in STEPS:
        _step(step, secret, token)  # the secret's name works as well as its ARN
    keys = agent_keys(emulator)
    _step("createSecret", secret, token)
    assert agent_keys(emulator) == keys
    current = _stage_value(moto_server, secret, "AWSCURRENT")
    assert current is not None and current[0] == token


def test_steps_out_of_order_raise(
    tmp_path: Path, emulator: EmulatorServer, moto_server: str, rotation: tuple[Path, str]
) -> None:
    """setSecret or finishSecret for a token createSecret never saw raises and changes nothing."""
    _, secret = rotation
    handler(SCHEDULED, None)
    keys = agent_keys(emulator)
    for step in ("setSecret", "testSecret", "finishSecret"):
        with pytest.raises(RotationStepFailed, match="no version of aws:"):
            _step(step, secret, str(uuid.uuid4()))
    assert agent_keys(emulator) == keys


def test_create_secret_during_a_drain_raises(
    tmp_path: Path, emulator: EmulatorServer, moto_server: str, rotation: tuple[Path, str]
) -> None:
    """A new rotation while the previous old key still drains fails visibly instead of minting a third."""
    _, secret = rotation
    handler(SCHEDULED, None)
    token = str(uuid.uuid4())
    for step in STEPS:
        _step(step, secret, token)
    keys = agent_keys(emulator)
    with pytest.raises(RotationStepFailed, match="is not pending"):
        _step("createSecret", secret, str(uuid.uuid4()))
    assert agent_keys(emulator) == keys


def test_test_secret_raises_when_the_vendor_rejects_the_pending_key(
    tmp_path: Path, emulator: EmulatorServer, moto_server: str, rotation: tuple[Path, str]
) -> None:
    """testSecret probes the pending key and raises, naming its fingerprint only, if it is rejected."""
    path, secret = rotation
    handler(SCHEDULED, None)
    token = str(uuid.uuid4())
    _step("createSecret", secret, token)
    _step("setSecret", secret, token)
    pending = _stage_value(moto_server, secret, "AWSPENDING")
    assert pending is not None
    engine = Engine(load_rotation_file(path), base_dir=tmp_path, settings=settings())
    issuer = engine.issuer("payments")
    revoked = [k for k in issuer.list_keys() if k.active and k.prefix == pending[1][:13]]
    issuer.revoke(revoked[0].id)
    with pytest.raises(RotationStepFailed, match="rejects the pending key") as failed:
        _step("testSecret", secret, token)
    assert pending[1] not in str(failed.value)


def test_secret_must_be_the_first_target(
    tmp_path: Path,
    emulator: EmulatorServer,
    moto_server: str,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A key whose Secrets Manager target is not its first is refused before anything happens."""
    path = tmp_path / "rotations.yaml"
    path.write_text(_spec_text(emulator, moto_server, "prod/second", first="file"))
    monkeypatch.setenv("ROTATOR_FILE", str(path))
    with pytest.raises(ConfigError, match="target #2; a rotation Lambda needs it to be the first"):
        _step("createSecret", "prod/second", str(uuid.uuid4()))
    with pytest.raises(ConfigError, match="no key of the rotation file has an aws target"):
        _step("createSecret", "prod/unknown", str(uuid.uuid4()))
    assert agent_keys(emulator) == []


def test_secret_matching_by_arn_and_name() -> None:
    """An ARN matches a name target (region checked, suffix optional); partial ARNs match full ones."""
    arn = "arn:aws:secretsmanager:eu-central-1:123456789012:secret:prod/payments/adjudon-AbC123"
    name = AwsTarget(type="aws", secret_id="prod/payments/adjudon", region="eu-central-1")
    assert same_secret(name, arn) and same_secret(name, "prod/payments/adjudon")
    assert not same_secret(AwsTarget(type="aws", secret_id="prod/payments/adjudon", region="us-east-1"), arn)
    assert not same_secret(AwsTarget(type="aws", secret_id="prod/payments", region="eu-central-1"), arn)
    partial = AwsTarget(type="aws", secret_id=arn[: -len("-AbC123")])
    assert same_secret(partial, arn) and same_secret(AwsTarget(type="aws", secret_id=arn), arn)
    assert not same_secret(partial, arn.replace("adjudon-", "adjudon2-"))
    spec = parse_rotation_file(
        "version: 1\nissuers: {e: {type: adjudon, credential: {env: X}}}\nkeys:\n"
        "  a: {issuer: e, targets: [{type: aws, secret_id: prod/payments/adjudon, region: eu-central-1}]}\n"
        "  b: {issuer: e, targets: [{type: aws, secret_id: prod/payments/adjudon, region: us-east-1}]}\n"
    )
    assert find_key(spec, arn) == "a"
    with pytest.raises(ConfigError, match="several keys: a, b"):
        find_key(spec, "prod/payments/adjudon")


def test_scheduled_event_runs_a_pass(
    tmp_path: Path, emulator: EmulatorServer, moto_server: str, rotation: tuple[Path, str]
) -> None:
    """A scheduled event mints and rolls out the first key; the answer is JSON with no raw key in it."""
    answer = handler(SCHEDULED, None)
    assert answer["event"] == "schedule" and answer["ok"]
    assert answer["results"][0]["outcome"] == "ok"
    value = read_dotenv_key(tmp_path / "secrets/payments.env")
    assert value is not None and emulator.emulator.key_accepted(value)
    assert value not in json.dumps(answer)
    assert handler(SCHEDULED, None)["results"][0]["steps"] == []  # nothing left to do


def test_emergency_event(
    tmp_path: Path, emulator: EmulatorServer, moto_server: str, rotation: tuple[Path, str]
) -> None:
    """The emergency event revokes the leaked key and rolls out a new one, or says it is not available."""
    handler(SCHEDULED, None)
    leaked = read_dotenv_key(tmp_path / "secrets/payments.env")
    assert leaked is not None
    answer = handler({"action": "emergency", "key": "payments", "reason": "pasted in a ticket"}, None)
    if importlib.util.find_spec("rotator.emergency") is None:
        assert answer == {"error": "emergency not available"}
        assert emulator.emulator.key_accepted(leaked)
        return
    assert answer["event"] == "emergency" and answer["key"] == "payments", answer
    assert not emulator.emulator.key_accepted(leaked)
    new = read_dotenv_key(tmp_path / "secrets/payments.env")
    assert new is not None and new != leaked and emulator.emulator.key_accepted(new)
    assert _stage_value(moto_server, rotation[1], "AWSCURRENT") is not None
    assert leaked not in json.dumps(answer) and new not in json.dumps(answer)


def test_unknown_event_raises(env: dict[str, str]) -> None:
    """An event of no known shape raises, naming its fields only."""
    with pytest.raises(ValueError, match="unknown event \\(fields: foo\\)"):
        handler({"foo": "adj_live_" + "0" * 64}, None)


def test_rotation_file_sources_in_order(
    tmp_path: Path,
    emulator: EmulatorServer,
    moto_server: str,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ROTATOR_FILE_S3 wins over ROTATOR_FILE_CONTENT, which wins over ROTATOR_FILE."""

    def text(key: str) -> str:
        return _spec_text(emulator, moto_server, "x").replace("  payments:", f"  {key}:")

    bucket = f"rotator-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=moto_server)
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="conf/rotations.yaml", Body=text("from-s3").encode())
    (tmp_path / "local.yaml").write_text(text("from-path"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server)
    monkeypatch.setenv("ROTATOR_FILE", str(tmp_path / "local.yaml"))
    monkeypatch.setenv("ROTATOR_FILE_CONTENT", text("from-content"))
    monkeypatch.setenv("ROTATOR_FILE_S3", f"s3://{bucket}/conf/rotations.yaml")

    spec, base = load_spec(settings())
    assert list(spec.keys) == ["from-s3"] and base == tmp_path / "state"
    assert (tmp_path / "state/rotations.yaml").read_text() == text("from-s3")
    monkeypatch.delenv("ROTATOR_FILE_S3")
    assert list(load_spec(settings())[0].keys) == ["from-content"]
    monkeypatch.delenv("ROTATOR_FILE_CONTENT")
    spec, base = load_spec(settings())
    assert list(spec.keys) == ["from-path"] and base == tmp_path
    monkeypatch.setenv("ROTATOR_FILE_S3", f"s3://{bucket}/missing.yaml")
    with pytest.raises(ConfigError, match="cannot fetch the rotation file \\(NoSuchKey\\)"):
        load_spec(settings())
    s3.delete_object(Bucket=bucket, Key="conf/rotations.yaml")
    s3.delete_bucket(Bucket=bucket)


def test_state_dir_defaults_to_tmp(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ROTATOR_STATE_DIR the state lives in the temp dir (Lambda's only writable one)."""
    monkeypatch.delenv("ROTATOR_STATE_DIR", raising=False)
    import tempfile

    assert settings().state_dir == Path(tempfile.gettempdir()) / "rotator"


def test_lease_table_from_the_environment(
    tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ROTATOR_LEASE_TABLE gives a file without a DynamoDB lease one; a different table is refused."""
    plain = parse_rotation_file(_spec_text(emulator, "https://x", "s"))
    monkeypatch.delenv("ROTATOR_LEASE_TABLE", raising=False)
    assert lease_for(plain) is None
    monkeypatch.setenv("ROTATOR_LEASE_TABLE", "rotator-leases")
    lease = lease_for(plain)
    assert isinstance(lease, DynamoDBLease) and lease.table == "rotator-leases"
    same = parse_rotation_file(
        _spec_text(emulator, "https://x", "s") + "lease: {type: dynamodb, table: rotator-leases}\n"
    )
    assert lease_for(same) is None  # the engine takes the file's own
    other = parse_rotation_file(
        _spec_text(emulator, "https://x", "s") + "lease: {type: dynamodb, table: other}\n"
    )
    with pytest.raises(ConfigError, match="runners would not exclude each other"):
        lease_for(other)


class _Context:
    """The part of Lambda's context object the handler reads."""

    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def test_no_time_left_ends_the_pass_before_any_step(
    tmp_path: Path, emulator: EmulatorServer, moto_server: str, rotation: tuple[Path, str]
) -> None:
    """With Lambda's deadline at hand, the pass stops between steps: nothing is minted half-way."""
    answer = handler(SCHEDULED, _Context(remaining_ms=0))
    result = answer["results"][0]
    assert (result["outcome"], result["steps"]) == ("waiting", []), result
    assert "stopped before the next step" in result["message"]
    assert agent_keys(emulator) == []
    assert handler(SCHEDULED, _Context(remaining_ms=300_000))["results"][0]["steps"] == [
        "mint",
        "stage",
        "promote",
    ]


def test_packaged_rotation_file_at_the_task_root(
    tmp_path: Path, emulator: EmulatorServer, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without any ROTATOR_FILE* variable, the rotations.yaml at LAMBDA_TASK_ROOT is read."""
    root = tmp_path / "task"
    root.mkdir()
    (root / "rotations.yaml").write_text(_spec_text(emulator, "https://x", "s"))
    monkeypatch.setenv("LAMBDA_TASK_ROOT", str(root))
    monkeypatch.chdir(tmp_path)
    spec, base = load_spec(settings())
    assert list(spec.keys) == ["payments"] and base == root


def test_lambda_logs_mask_key_shaped_text(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """In Lambda, the runtime's log handler is kept and every line through it has keys masked."""
    import io
    import logging

    import rotator.lambda_handler as module

    out = io.StringIO()
    runtime = logging.StreamHandler(out)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [runtime])
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setattr(module, "_configured", False)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "rotator")
    raw = "adj_agent_" + "ab" * 24
    module._configure_logging()
    logging.getLogger("rotator.test").warning("value %s leaked", raw)
    assert root.handlers == [runtime]
    assert raw not in out.getvalue() and "adj_agent_ab…[redacted]" in out.getvalue()
