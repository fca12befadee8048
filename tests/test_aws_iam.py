"""AWS IAM access keys as an issuer, on the moto server with IAM authentication on.

Every test runs with moto checking signatures and policies (``enable_iam_authentication``):
the rotator runs as an IAM user whose policy is the issuer's own :func:`policy_document`
(with ``Resource: "*"``, since moto matches IAM actions only against ``*``) plus Secrets
Manager; consumers sign STS calls with whatever key they read, so a deleted key really
fails. moto records ``LastUsedDate`` for every request a key signs (checked below), which
is what the drain waits on. botocore's Stubber stands in only for throttling and server
errors, which moto cannot be made to answer.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto.core import enable_iam_authentication

from rotator.engine.runner import Engine
from rotator.errors import (
    ConfigError,
    KeyLimitReached,
    VendorAuthError,
    VendorError,
    VendorNotFound,
    VendorOutcomeUnknown,
    VendorProtocolError,
    VendorUnavailable,
)
from rotator.secret import Secret
from rotator.spec import (
    AwsIamIssuerSpec,
    FileTarget,
    KeySpec,
    Settings,
    load_rotation_file,
    parse_rotation_file,
)
from rotator.vendors import RetryPolicy, make_issuer
from rotator.vendors.aws_iam import (
    ATTEMPT_TAG,
    DEACTIVATED_TAG,
    POLICY_ACTIONS,
    AwsIamIssuer,
    decode_value,
    encode_value,
    policy_document,
)
from tests.conftest import run_cli

REGION = "us-east-1"
KEY = "svc"
FAST = Settings(retry_initial=0.01, probe_timeout=5)
Creds = tuple[str, str]


# --------------------------------------------------------------------------- the world


@dataclass
class World:
    """Users on the moto server: ``root`` may do anything, ``runner`` is the rotator,
    ``user`` owns the rotated keys."""

    url: str
    root: Creds
    runner: Creds
    user: str
    secret_id: str
    tag: str
    _clients: dict[tuple[str, Creds], Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, service: str, creds: Creds | None = None) -> Any:
        """A client signing with ``creds`` (root's by default), built once."""
        key_id, secret = creds or self.root
        with self._lock:
            if (service, (key_id, secret)) not in self._clients:
                session: Any = boto3.session.Session(
                    aws_access_key_id=key_id, aws_secret_access_key=secret, region_name=REGION
                )
                self._clients[service, (key_id, secret)] = session.client(service, endpoint_url=self.url)
            return self._clients[service, (key_id, secret)]

    def keys(self) -> dict[str, str]:
        """``{AccessKeyId: Status}`` of the rotated user, as root sees them."""
        listed = self.client("iam").list_access_keys(UserName=self.user)["AccessKeyMetadata"]
        return {k["AccessKeyId"]: k["Status"] for k in listed}

    def tags(self) -> dict[str, str]:
        out = self.client("iam").list_user_tags(UserName=self.user)["Tags"]
        return {t["Key"]: t["Value"] for t in out}

    def hand_made_key(self) -> str:
        """A key created outside the rotator (no tag)."""
        created = self.client("iam").create_access_key(UserName=self.user)["AccessKey"]
        key_id: str = created["AccessKeyId"]
        return key_id

    def user_with(self, actions: list[str]) -> Creds:
        """A fresh IAM user allowed only ``actions``; its access key."""
        return _user(self.client("iam"), f"limited-{uuid.uuid4().hex[:8]}", [_allow(actions)])

    def issuer(self, creds: Creds | None = None) -> AwsIamIssuer:
        """The issuer over injected clients signed with ``creds`` (the runner by default)."""
        return AwsIamIssuer(
            "iam",
            self.user,
            client=self.client("iam", creds or self.runner),
            probe_client=lambda key_id, secret: self.client("sts", (key_id, secret)),
        )

    def spec(self, **extra: Any) -> AwsIamIssuerSpec:
        data = {"type": "aws_iam", "user_name": self.user, "region": REGION, "endpoint_url": self.url}
        return AwsIamIssuerSpec.model_validate({**data, **extra})


def _allow(actions: list[str]) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": actions, "Resource": "*"}


def _user(iam: Any, name: str, statements: list[dict[str, Any]]) -> Creds:
    iam.create_user(UserName=name)
    policy = {"Version": "2012-10-17", "Statement": statements}
    iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


@pytest.fixture
def world(moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[World]:
    """Fresh users, the runner's key in the environment, IAM authentication on."""
    tag = uuid.uuid4().hex[:8]
    setup = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    ).client("iam", endpoint_url=moto_server)
    root = _user(setup, f"root-{tag}", [_allow(["*"])])
    runner_policy = policy_document(["*"])["Statement"]
    runner = _user(setup, f"rotator-{tag}", [*runner_policy, _allow(["secretsmanager:*"])])
    user = f"svc-{tag}"
    setup.create_user(UserName=user)
    # moto asks for this permission; AWS answers GetCallerIdentity for any valid key
    policy = {"Version": "2012-10-17", "Statement": [_allow(["sts:GetCallerIdentity"])]}
    setup.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps(policy))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", runner[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", runner[1])
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION", "ROTATOR_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    with enable_iam_authentication():
        yield World(moto_server, root, runner, user, f"iam/{user}", tag)


def _write_spec(
    tmp: Path,
    w: World,
    *,
    drain: str = "1s",
    propagation: str = "300ms",
    timeout: str = "30s",
    delete_after: str = "7d",
    extra: str = "",
) -> Path:
    text = f"""\
version: 1
state_dir: state
defaults:
  verify: {{drain: {drain}, propagation: {propagation}, timeout: {timeout}}}
issuers:
  iam:
    type: aws_iam
    user_name: {w.user}
    region: {REGION}
    endpoint_url: {w.url}
    delete_after: {delete_after}
{extra}keys:
  {KEY}:
    issuer: iam
    targets:
      - {{type: aws, secret_id: {w.secret_id}, region: {REGION}, endpoint_url: {w.url}}}
      - {{type: file, path: secrets/svc.json}}
"""
    (tmp / "secrets").mkdir(exist_ok=True)
    path = tmp / "rotations.yaml"
    path.write_text(text)
    return path


def _engine(path: Path, **kw: Any) -> Engine:
    return Engine(load_rotation_file(path), base_dir=path.parent, settings=FAST, **kw)


def _stored(w: World, tmp: Path) -> tuple[str, str]:
    """The access key id current in Secrets Manager and in the file target."""
    sm = w.client("secretsmanager").get_secret_value(SecretId=w.secret_id, VersionStage="AWSCURRENT")
    in_file = json.loads((tmp / "secrets" / "svc.json").read_text())
    return json.loads(sm["SecretString"])["AccessKeyId"], in_file["AccessKeyId"]


def _events(engine: Engine) -> list[tuple[str, Any]]:
    return [(e["event"], e["details"].get("key_id")) for e in engine.journal.entries(KEY)]


@dataclass
class Consumer:
    """A thread that signs STS calls with the key it reads from Secrets Manager each time
    (or, ``pinned``, with the first key it read, forever)."""

    world: World
    pinned: bool = False
    used: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._store = self.world.client("secretsmanager")
        self._clients: dict[str, Any] = {}

    def __enter__(self) -> Consumer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        text = None
        while not self.stop.is_set():
            try:
                if text is None or not self.pinned:
                    got = self._store.get_secret_value(
                        SecretId=self.world.secret_id, VersionStage="AWSCURRENT"
                    )
                    text = got["SecretString"]
                creds = json.loads(text)
                key_id = creds["AccessKeyId"]
                if key_id not in self._clients:
                    self._clients[key_id] = self.world.client("sts", (key_id, creds["SecretAccessKey"]))
                self._clients[key_id].get_caller_identity()
                self.used.append(key_id)
            except ClientError as exc:
                self.errors.append(exc.response["Error"]["Code"])
            except (ValueError, KeyError) as exc:  # the store held something that is not a key
                self.errors.append(type(exc).__name__)
            self.stop.wait(0.02)

    def wait_for(self, key_id: str, timeout: float = 10) -> None:
        deadline = datetime.now(UTC) + timedelta(seconds=timeout)
        while key_id not in self.used[-3:]:
            assert datetime.now(UTC) < deadline, f"consumer never used {key_id}: {self.errors[-3:]}"
            self.stop.wait(0.02)


# --------------------------------------------------------------------------- the issuer


def test_mint_stores_compact_json_and_tags_the_attempt(world: World) -> None:
    """A minted key is sorted compact JSON, named by a user tag that list_keys reads back."""
    issuer = make_issuer(  # no region: IAM is global
        world.spec(region=None),
        KeySpec(issuer="iam", targets=[FileTarget(type="file", path="x")]),
        credential=lambda: Secret("unused"),
    )
    name = f"rotator:{KEY}:{uuid.uuid4()}"
    minted = issuer.mint(name)
    key_id = minted.key.id
    raw = minted.value.reveal()
    secret = json.loads(raw)["SecretAccessKey"]
    assert raw == json.dumps({"AccessKeyId": key_id, "SecretAccessKey": secret}, separators=(",", ":"))
    assert key_id.startswith("AKIA") and len(key_id) == 20 and minted.key.prefix == key_id
    assert world.tags()[ATTEMPT_TAG + key_id] == name
    [listed] = issuer.list_keys()
    assert (listed.id, listed.name, listed.status, listed.revoked_at) == (key_id, name, "active", None)
    assert issuer.matches(minted.value, listed)
    assert secret not in repr(minted) and secret not in str(minted.value)


def test_matches_only_the_json_of_that_key_id(world: World) -> None:
    """matches() compares the AccessKeyId of well-formed JSON; anything else never matches."""
    issuer = world.issuer()
    minted = issuer.mint(f"rotator:{KEY}:{uuid.uuid4()}")
    key_id, secret = decode_value(minted.value) or ("", "")
    other = world.hand_made_key()
    by_id = {k.id: k for k in issuer.list_keys()}
    assert issuer.matches(minted.value, by_id[key_id])
    assert not issuer.matches(minted.value, by_id[other])
    spaced = Secret(json.dumps({"SecretAccessKey": secret, "AccessKeyId": key_id}, indent=2))
    assert issuer.matches(spaced, by_id[key_id])  # a person may store it pretty-printed
    for bad in (
        key_id,
        key_id + secret,
        json.dumps([key_id, secret]),
        json.dumps({"AccessKeyId": key_id}),
        json.dumps({"AccessKeyId": key_id, "SecretAccessKey": "short"}),
        json.dumps({"AccessKeyId": key_id.lower(), "SecretAccessKey": secret}),
        "{not json",
    ):
        assert not issuer.matches(Secret(bad), by_id[key_id]), bad
    assert decode_value(encode_value(key_id, secret)) == (key_id, secret)


class _Tampered:
    """The real IAM client, whose CreateAccessKey answer loses its secret's format."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def create_access_key(self, **kw: Any) -> Any:
        out = self._client.create_access_key(**kw)
        out["AccessKey"]["SecretAccessKey"] = "truncated-" + out["AccessKey"]["SecretAccessKey"][:8]
        return out


def test_malformed_new_key_is_deleted_not_returned(world: World) -> None:
    """A created key whose secret fails the format check is deleted again and never returned."""
    iam = world.client("iam", world.runner)
    issuer = AwsIamIssuer(
        "iam",
        world.user,
        client=iam,
        mint_client=_Tampered(iam),  # type: ignore[arg-type]
        probe_client=lambda *_: world.client("sts"),
    )
    with pytest.raises(VendorProtocolError, match=r"not 40 characters of base64.*was deleted again"):
        issuer.mint(f"rotator:{KEY}:{uuid.uuid4()}")
    assert world.keys() == {}


def test_untaggable_key_is_deleted(world: World) -> None:
    """A key that cannot be named (TagUser denied) is deleted: an unnamed key would be a mystery."""
    creds = world.user_with([a for a in POLICY_ACTIONS if a != "iam:TagUser"])
    with pytest.raises(VendorAuthError, match=rf"{world.user}: tag key AKIA\w+: AccessDenied.*deleted again"):
        world.issuer(creds).mint(f"rotator:{KEY}:{uuid.uuid4()}")
    assert world.keys() == {}


def test_limit_exceeded_is_key_limit_reached(world: World) -> None:
    """IAM's two-key limit (inactive keys count) is the 409 KeyLimitReached."""
    first = world.hand_made_key()
    world.client("iam").update_access_key(UserName=world.user, AccessKeyId=first, Status="Inactive")
    world.hand_made_key()
    with pytest.raises(KeyLimitReached, match=world.user) as info:
        world.issuer().mint(f"rotator:{KEY}:{uuid.uuid4()}")
    assert info.value.status == 409 and info.value.code == "LimitExceeded"


def test_revoke_deactivates_then_deletes(world: World) -> None:
    """revoke() deactivates and records when; a second revoke deletes the key and its tags."""
    issuer = world.issuer()
    key_id = issuer.mint(f"rotator:{KEY}:{uuid.uuid4()}").key.id
    before = datetime.now(UTC)
    first = issuer.revoke(key_id)
    assert first.status == "inactive" and world.keys() == {key_id: "Inactive"}
    [listed] = issuer.list_keys()
    assert listed.status == "inactive" and listed.revoked_at == first.revoked_at
    assert listed.revoked_at is not None and before <= listed.revoked_at <= datetime.now(UTC)
    assert DEACTIVATED_TAG + key_id in world.tags()
    second = issuer.revoke(key_id)
    assert second.status == "revoked" and world.keys() == {}
    assert not [t for t in world.tags() if key_id in t]
    assert issuer.revoke(key_id).status == "revoked"  # gone already: idempotent


def test_reactivate_restores_an_inactive_key(world: World) -> None:
    """reactivate() makes a deactivated key active and drops its deactivation time."""
    issuer = world.issuer()
    key_id = issuer.mint(f"rotator:{KEY}:{uuid.uuid4()}").key.id
    issuer.revoke(key_id)
    assert issuer.reactivate(key_id).status == "active"
    assert world.keys() == {key_id: "Active"}
    assert DEACTIVATED_TAG + key_id not in world.tags()
    [listed] = issuer.list_keys()
    assert listed.active and listed.revoked_at is None and listed.name.startswith(f"rotator:{KEY}:")
    assert issuer.reactivate(key_id).status == "active"  # idempotent
    with pytest.raises(VendorNotFound, match="AKIA0000000000000000"):
        issuer.reactivate("AKIA0000000000000000")


def test_probe_accepts_only_this_users_working_key(world: World) -> None:
    """The probe answers True for the user's key, False for a wrong secret, another user's key,
    a deleted key and a value that is no key."""
    issuer = world.issuer()
    minted = issuer.mint(f"rotator:{KEY}:{uuid.uuid4()}")
    assert issuer.probe(minted.value)
    key_id, secret = decode_value(minted.value) or ("", "")
    wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert not issuer.probe(encode_value(key_id, wrong))  # SignatureDoesNotMatch
    assert not issuer.probe(encode_value(*world.runner))  # answers, but as another user
    assert not issuer.probe(Secret("not a key"))
    issuer.revoke(key_id)
    issuer.revoke(key_id)
    assert not issuer.probe(minted.value)  # InvalidClientTokenId


def test_last_used_date_follows_signed_requests(world: World) -> None:
    """moto records LastUsedDate for a request a key signs, as IAM does: list_keys reports it."""
    issuer = world.issuer()
    minted = issuer.mint(f"rotator:{KEY}:{uuid.uuid4()}")
    assert issuer.list_keys()[0].last_used_at is None
    before = datetime.now(UTC)
    world.client("sts", decode_value(minted.value)).get_caller_identity()
    used = issuer.list_keys()[0].last_used_at
    assert used is not None and before <= used <= datetime.now(UTC)
    assert issuer.activity(minted.key.id).last_used_at == used


def test_policy_document_scopes_the_actions_to_the_users() -> None:
    """The least-privilege policy names every action the issuer calls, on the given users only."""
    arns = ["arn:aws:iam::111122223333:user/svc-a", "arn:aws:iam::111122223333:user/ci/svc-b"]
    [statement] = policy_document(arns)["Statement"]
    assert statement["Effect"] == "Allow" and statement["Resource"] == arns
    assert set(statement["Action"]) == set(POLICY_ACTIONS) and len(POLICY_ACTIONS) == 8


# --------------------------------------------------------------------------- errors


def test_errors_keep_their_kind_and_name_the_user(world: World) -> None:
    """NoSuchEntity, AccessDenied and an unreachable endpoint map to their kinds."""
    missing = AwsIamIssuer(
        "iam",
        "nobody-" + world.tag,
        client=world.client("iam", world.runner),
        probe_client=lambda *_: world.client("sts"),
    )
    with pytest.raises(VendorNotFound, match=f"user:nobody-{world.tag}: list keys: NoSuchEntity"):
        missing.list_keys()
    reader = world.issuer(world.user_with(["iam:ListAccessKeys", "iam:ListUserTags"]))
    with pytest.raises(VendorAuthError, match=f"user:{world.user}: create key: AccessDenied"):
        reader.mint(f"rotator:{KEY}:{uuid.uuid4()}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    key = KeySpec(issuer="iam", targets=[FileTarget(type="file", path="x")])
    down = make_issuer(
        world.spec(endpoint_url=closed, timeout="2s"),
        key,
        credential=lambda: Secret("unused"),
        retry=RetryPolicy(attempts=1),
    )
    with pytest.raises(VendorUnavailable, match="cannot reach AWS") as info:
        down.mint(f"rotator:{KEY}:{uuid.uuid4()}")
    assert not isinstance(info.value, VendorOutcomeUnknown)  # never connected: nothing was created
    with pytest.raises(VendorUnavailable):
        down.list_keys()
    # validate refuses it already; the issuer checks again for specs built in code
    plain = world.spec().model_copy(update={"endpoint_url": "http://iam.example.com"})
    with pytest.raises(ConfigError, match="endpoint_url: only https"):
        make_issuer(plain, key, credential=lambda: Secret("unused"))


def test_throttling_and_server_errors(world: World) -> None:
    """Throttling is transient; a server error on CreateAccessKey leaves the outcome unknown."""
    client = world.client("iam", world.runner)
    issuer = AwsIamIssuer("iam", world.user, client=client, probe_client=lambda *_: world.client("sts"))
    with Stubber(client) as stub:
        stub.add_client_error("list_access_keys", "Throttling", "Rate exceeded", 400)
        stub.add_client_error("create_access_key", "Throttling", "Rate exceeded", 400)
        stub.add_client_error("create_access_key", "ServiceFailure", "oops", 500)
        with pytest.raises(VendorUnavailable, match="Throttling"):
            issuer.list_keys()
        with pytest.raises(VendorUnavailable) as throttled:
            issuer.mint(f"rotator:{KEY}:{uuid.uuid4()}")
        assert not isinstance(throttled.value, VendorOutcomeUnknown)
        with pytest.raises(VendorOutcomeUnknown, match="ServiceFailure"):
            issuer.mint(f"rotator:{KEY}:{uuid.uuid4()}")


def test_no_secret_in_logs_errors_or_journal(
    world: World, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Canary: a whole rotation and its failures at DEBUG never show a secret access key."""
    for name in ("", "botocore.parsers", "botocore.endpoint"):
        caplog.set_level(logging.DEBUG, logger=name or None)
    path = _write_spec(tmp_path, world, drain="0s", propagation="0s", delete_after="0s")
    with _engine(path) as engine:
        assert engine.apply([KEY], wait=True)[0].outcome == "ok"
        assert engine.apply([KEY], force=True, wait=True)[0].outcome == "ok"
    secrets = [json.loads((tmp_path / "secrets" / "svc.json").read_text())["SecretAccessKey"]]
    issuer = world.issuer()
    messages = []
    minted = issuer.mint(f"rotator:{KEY}:{uuid.uuid4()}")
    secrets.append(decode_value(minted.value)[1])  # type: ignore[index]
    for fail in (
        lambda: issuer.mint("rotator:x:y"),
        lambda: world.issuer(world.user_with(["sts:GetCallerIdentity"])).list_keys(),
    ):
        with pytest.raises(VendorError) as info:
            fail()
        messages += [str(info.value), repr(info.value)]
    key_id = minted.key.id
    assert not issuer.probe(encode_value(key_id, secrets[-1][::-1]))
    journal = (tmp_path / "state" / "audit.jsonl").read_text()
    # the records of the rotator's process; moto's own (the emulated AWS side) are not
    logged = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith(("moto", "werkzeug")))
    assert f"<AccessKeyId>{key_id}</AccessKeyId>" in logged  # botocore did log the answer
    for secret in secrets:
        assert len(secret) == 40
        for text in (logged, journal, *messages, repr(minted), repr(issuer.list_keys())):
            assert secret not in text


# --------------------------------------------------------------------------- the engine


def test_rotation_moves_a_live_consumer_then_deletes_the_old_key(world: World, tmp_path: Path) -> None:
    """Mint, roll out to Secrets Manager and a file, drain a live consumer, deactivate the old
    key, and on a later pass delete it; the consumer never fails."""
    path = _write_spec(tmp_path, world, delete_after="2s")
    with _engine(path) as engine:
        [first] = engine.apply([KEY], wait=True)
    assert first.outcome == "ok", first.message
    [old] = world.keys()
    assert _stored(world, tmp_path) == (old, old)
    with Consumer(world) as consumer:
        consumer.wait_for(old)
        with _engine(path) as engine:
            [rotation] = engine.apply([KEY], force=True, wait=True)
        assert rotation.outcome == "ok" and rotation.steps == ["mint", "stage", "promote", "revoke"], rotation
        [new] = set(world.keys()) - {old}
        assert world.keys() == {old: "Inactive", new: "Active"}
        assert _stored(world, tmp_path) == (new, new)
        consumer.wait_for(new)
        deactivated = engine.issuer(KEY).list_keys()
        [old_key] = [k for k in deactivated if k.id == old]
        assert old_key.last_used_at is not None and old_key.revoked_at is not None
        assert old_key.last_used_at < old_key.revoked_at  # drained before it was deactivated
        later = datetime.now(UTC) + timedelta(seconds=3)
        with _engine(path, clock=lambda: later) as engine:
            [cleanup] = engine.apply([KEY])
        assert cleanup.outcome == "ok" and cleanup.steps == ["revoke"], cleanup
        assert world.keys() == {new: "Active"}
        consumer.wait_for(new)
    assert consumer.errors == []
    assert consumer.used.index(new) > max(i for i, k in enumerate(consumer.used) if k == old)
    events = _events(engine)
    assert ("revoked", old) in events and events[-1] == ("deleted", old)
    with pytest.raises(ClientError, match="InvalidClientTokenId"):  # deleted for real
        world.client(
            "sts", (old, json.loads(_old_value(engine, old))["SecretAccessKey"])
        ).get_caller_identity()


def _old_value(engine: Engine, key_id: str) -> str:
    """The old key's value, still kept by Secrets Manager as AWSPREVIOUS."""
    store = engine.stores(KEY)[0]
    client = store._client  # type: ignore[attr-defined]
    text: str = client.get_secret_value(SecretId=store.target.secret_id, VersionStage="AWSPREVIOUS")[
        "SecretString"
    ]  # type: ignore[attr-defined]
    assert json.loads(text)["AccessKeyId"] == key_id
    return text


def test_consumer_left_on_the_old_key_holds_the_rotation(world: World, tmp_path: Path) -> None:
    """A consumer that keeps the old key blocks its deactivation: held at the drain timeout
    (exit 3), the old key still active."""
    path = _write_spec(tmp_path, world, drain="1s", propagation="200ms", timeout="2s")
    with _engine(path) as engine:
        assert engine.apply([KEY], wait=True)[0].outcome == "ok"
    [old] = world.keys()
    with Consumer(world, pinned=True) as consumer:
        consumer.wait_for(old)
        env = {"ROTATOR_RETRY_INITIAL": "0.01", "ROTATOR_PROBE_TIMEOUT": "5"}
        proc = run_cli("-f", str(path), "rotate", KEY, "--wait", cwd=tmp_path, env=env, timeout=60)
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert "held" in proc.stdout and "drain timeout" in proc.stdout
        assert consumer.used[-1] == old
    [new] = set(world.keys()) - {old}
    assert world.keys() == {old: "Active", new: "Active"}
    assert _stored(world, tmp_path) == (new, new)
    assert consumer.errors == []


def test_unknown_active_keys_are_never_removed(world: World, tmp_path: Path) -> None:
    """A newer active key the rotator did not mint and no target holds is left alone (held);
    so are two such keys when no target holds any."""
    path = _write_spec(tmp_path, world)
    with _engine(path) as engine:
        assert engine.apply([KEY], wait=True)[0].outcome == "ok"
        [current] = world.keys()
        stranger = world.hand_made_key()
        [result] = engine.apply([KEY], force=True, wait=True)
    assert result.outcome == "held" and result.steps == [] and stranger in result.message
    assert world.keys() == {current: "Active", stranger: "Active"}
    world.client("iam").delete_access_key(UserName=world.user, AccessKeyId=current)
    other = world.hand_made_key()
    (tmp_path / "fresh").mkdir()
    fresh_path = tmp_path / "fresh" / "rotations.yaml"
    fresh_path.write_text(path.read_text().replace(world.secret_id, world.secret_id + "-fresh"))
    with _engine(fresh_path) as engine:
        [fresh] = engine.apply([KEY], force=True, wait=True)
    assert fresh.outcome == "held" and "not minting around them" in fresh.message, fresh
    assert fresh.steps == [] and world.keys() == {other: "Active", stranger: "Active"}


def test_leftover_inactive_key_is_deleted_before_minting(world: World, tmp_path: Path) -> None:
    """An inactive key holding the second slot is deleted first when a rotation is due."""
    path = _write_spec(tmp_path, world, drain="1h", timeout="2h")
    with _engine(path) as engine:
        assert engine.apply([KEY], wait=True)[0].outcome == "ok"
        [current] = world.keys()
        leftover = world.hand_made_key()
        world.client("iam").update_access_key(UserName=world.user, AccessKeyId=leftover, Status="Inactive")
        [result] = engine.apply([KEY], force=True)
        events = _events(engine)
    assert result.outcome == "waiting" and result.steps[:2] == ["revoke", "mint"], result
    keys = world.keys()
    assert leftover not in keys and keys[current] == "Active" and len(keys) == 2
    deleted = events.index(("deleted", leftover))
    assert [e for e, _ in events[deleted:]][:2] == ["deleted", "minted"]


def test_cli_reactivate(world: World, tmp_path: Path) -> None:
    """`rotator reactivate` restores a deactivated IAM key and journals it; issuers whose
    revoke is final refuse."""
    extra = "  other:\n    type: adjudon\n    base_url: http://127.0.0.1:9\n    credential: {env: NOPE}\n"
    path = _write_spec(tmp_path, world, extra=extra)
    text = (
        path.read_text() + "  other-key:\n    issuer: other\n    targets: [{type: file, path: other.key}]\n"
    )
    path.write_text(text)
    with _engine(path) as engine:
        assert engine.apply([KEY], wait=True)[0].outcome == "ok"
    [old] = world.keys()
    world.issuer().revoke(old)
    proc = run_cli("-f", str(path), "reactivate", KEY, old, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert world.keys() == {old: "Active"} and f"{old} is active again" in proc.stdout
    assert _events(engine)[-1] == ("reactivated", old)
    refused = run_cli("-f", str(path), "reactivate", "other-key", "k1", cwd=tmp_path)
    assert refused.returncode == 1 and "cannot reactivate" in refused.stderr


# --------------------------------------------------------------------------- the rotation file


def _file(issuer: str, key: str) -> str:
    return f"version: 1\nissuers:\n  iam:\n{issuer}keys:\n{key}"


_ISSUER = "    type: aws_iam\n    user_name: svc\n"
_KEY = "  svc:\n    issuer: iam\n    targets: [{type: file, path: k.json}]\n"


def test_rotation_file_checks_aws_iam_keys() -> None:
    """aws_iam keys have no kind, rotate with overlap, one per issuer, with tag-safe names."""
    spec = parse_rotation_file(_file(_ISSUER, _KEY))
    issuer = spec.issuers["iam"]
    assert isinstance(issuer, AwsIamIssuerSpec) and issuer.delete_after == timedelta(days=7)
    assert spec.strategy("svc") == "overlap"
    bad = {
        _file(_ISSUER, _KEY + "    kind: workspace\n"): "aws_iam keys have no kind",
        _file(_ISSUER, _KEY + "    strategy: cutover\n"): "rotate with overlap",
        _file(_ISSUER, _KEY + _KEY.replace("svc:", "svc2:")): "already serves key 'svc'",
        _file(_ISSUER, _KEY.replace("svc:", "'svc#1':")): "a name is 1 to 128 letters",
        _file("    type: aws_iam\n    user_name: 'svc acct'\n", _KEY): "user_name",
        _file(_ISSUER + "    credential: {env: X}\n", _KEY): "unknown field",
    }
    for text, problem in bad.items():
        with pytest.raises(ConfigError, match=problem):
            parse_rotation_file(text)
