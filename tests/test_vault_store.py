"""What the Vault / OpenBao KV v2 store adds to the contract suite, against a real OpenBao."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from providers.vault import VaultStore, open_store
from rotator.abc import Stamp
from rotator.errors import (
    ConfigError,
    StoreAccessDenied,
    StoreConflict,
    StoreFormatError,
    StoreUnavailable,
    Transient,
)
from rotator.secret import Secret
from rotator.spec import VaultAuth, VaultTarget
from tests.harnesses.vault import OpenBaoServer, VaultHarness

NOW = datetime(2026, 1, 5, 3, 0, tzinfo=UTC)


def rotate(store: VaultStore, raw: str, key_id: str = "key_1") -> Stamp:
    """Stage ``raw`` under a fresh attempt and promote it, as one engine pass would."""
    value = Secret(raw)
    stamp = Stamp(key_id, value.fingerprint, str(uuid.uuid4()))
    store.stage(value, stamp, expected=store.read().revision)
    store.promote(stamp.attempt, NOW)
    return stamp


def stage(store: VaultStore, raw: str, key_id: str = "key_1") -> Stamp:
    """Stage ``raw`` under a fresh attempt."""
    value = Secret(raw)
    stamp = Stamp(key_id, value.fingerprint, str(uuid.uuid4()))
    store.stage(value, stamp, expected=None)
    return stamp


def stamp_keys(meta: dict[str, Any]) -> set[int]:
    return {
        int(k.removeprefix("rotator-v")) for k in meta["custom_metadata"] or {} if k.startswith("rotator-v")
    }


@pytest.fixture
def harness(vault_harness: VaultHarness) -> VaultHarness:
    return vault_harness


@pytest.fixture
def store(harness: VaultHarness) -> VaultStore:
    target = harness.target(field="api_key")
    return open_store(target, base_dir=harness.base_dir)


@pytest.fixture
def cas_mount(openbao_server: OpenBaoServer) -> str:
    """A second KV v2 mount whose config requires check-and-set on every write."""
    client = openbao_server.client()
    if "cas-kv/" not in client.sys.list_mounted_secrets_engines()["data"]:
        client.sys.enable_secrets_engine("kv", path="cas-kv", options={"version": "2"})
        client.secrets.kv.v2.configure(cas_required=True, mount_point="cas-kv")
    return "cas-kv"


def test_cas_required_mount_works(
    openbao_server: OpenBaoServer, cas_mount: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a mount with cas_required, staging and promoting work and a blind write does not."""
    import hvac.exceptions

    harness = VaultHarness(openbao_server, tmp_path, monkeypatch, mount=cas_mount)
    store = open_store(harness.target(field="api_key"), base_dir=tmp_path)
    rotate(store, "sk_first")
    second = rotate(store, "sk_second")
    state = store.read()
    assert state.current is not None and state.current.stamp == Stamp(
        "key_1", second.fingerprint, second.attempt, NOW
    )
    assert state.current.value == Secret("sk_second") and state.pending is None
    with pytest.raises(hvac.exceptions.InvalidRequest, match="check-and-set"):
        openbao_server.client().secrets.kv.v2.create_or_update_secret(
            path=store.target.path, secret={"api_key": "blind"}, mount_point=cas_mount
        )


def test_stamps_live_in_custom_metadata_never_in_data(harness: VaultHarness, store: VaultStore) -> None:
    """The stamp (with a canary key id) is in custom_metadata; the data holds only the fields."""
    harness.write_data(store, {"api_key": "sk_old", "DB_URL": "postgres://db/app"})
    canary = f"canary-{uuid.uuid4().hex}"
    stamp = rotate(store, "sk_live_canary_value", key_id=canary)
    data = harness.data(store)
    assert data == {"api_key": "sk_live_canary_value", "DB_URL": "postgres://db/app"}
    meta = harness.metadata(store)
    assert canary not in json.dumps(data) and stamp.attempt not in json.dumps(data)
    assert json.loads(meta["custom_metadata"]["rotator-v2"])["k"] == canary
    assert "sk_live_canary_value" not in json.dumps(meta)


def test_staging_is_visible_and_current_is_the_version_below(
    harness: VaultHarness, store: VaultStore
) -> None:
    """A staged version is the latest consumers read; read() reports the promoted one as current."""
    first = rotate(store, "sk_one")
    stage(store, "sk_two")
    third = stage(store, "sk_three")  # a second staging on top of one never promoted
    assert json.loads(harness.read_raw(store) or "{}") == {"api_key": "sk_three"}
    state = store.read()
    assert state.current is not None and state.current.version == "1"
    assert state.current.stamp is not None and state.current.stamp.attempt == first.attempt
    assert state.pending is not None and state.pending.version == "3"
    assert state.pending.stamp is not None and state.pending.stamp.attempt == third.attempt


def test_versions_are_kept(harness: VaultHarness, store: VaultStore) -> None:
    """Every rotation is a new KV version; older ones stay readable with their stamps."""
    stamps = [rotate(store, f"sk_{i}") for i in range(3)]
    meta = harness.metadata(store)
    assert sorted(int(v) for v in meta["versions"]) == [1, 2, 3]
    assert [harness.data(store, v) for v in (1, 2, 3)] == [{"api_key": f"sk_{i}"} for i in range(3)]
    assert stamp_keys(meta) == {1, 2, 3}
    assert json.loads(meta["custom_metadata"]["rotator-v1"])["a"] == stamps[0].attempt
    assert store.read().current is not None


def test_old_stamps_are_pruned(harness: VaultHarness, store: VaultStore) -> None:
    """Stamps of versions KV no longer keeps are removed; other custom_metadata stays."""
    client = harness.server.client()
    client.secrets.kv.v2.update_metadata(
        path=store.target.path,
        mount_point="secret",
        max_versions=3,
        custom_metadata={"owner": "payments-team", "rotator-v99": "left by a lost write"},
    )
    for i in range(6):
        rotate(store, f"sk_{i}")
    meta = harness.metadata(store)
    kept = {int(v) for v in meta["versions"]}
    assert kept == {4, 5, 6}
    assert stamp_keys(meta) <= kept and 6 in stamp_keys(meta)
    assert meta["custom_metadata"]["owner"] == "payments-team"
    state = store.read()
    assert state.current is not None and state.current.value == Secret("sk_5")


def test_concurrent_cas_write_is_a_conflict(
    harness: VaultHarness, openbao_server: OpenBaoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer landing between our read and our write makes the server's cas refuse it."""
    client = openbao_server.client()
    store = open_store(harness.target(field="api_key"), base_dir=harness.base_dir, client=client)
    rotate(store, "sk_one")
    kv = client.secrets.kv.v2
    write = kv.create_or_update_secret

    def racing(**kwargs: Any) -> Any:
        harness.write_data(store, {"api_key": "sk_by_someone_else"})
        return write(**kwargs)

    monkeypatch.setattr(kv, "create_or_update_secret", racing)
    with pytest.raises(StoreConflict, match=r"vault:secret/contract/\w+#api_key.*check-and-set"):
        stage(store, "sk_two")
    monkeypatch.undo()
    assert harness.data(store) == {"api_key": "sk_by_someone_else"}
    assert stamp_keys(harness.metadata(store)) == {1}
    state = store.read()
    assert state.current is not None and state.current.stamp is None and state.pending is None


def test_concurrent_metadata_write_is_a_conflict(
    harness: VaultHarness, openbao_server: OpenBaoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A metadata write landing between our read and our promote trips OpenBao's metadata_cas."""
    client = openbao_server.client()
    store = open_store(harness.target(field="api_key"), base_dir=harness.base_dir, client=client)
    staged = stage(store, "sk_one")
    post = client.adapter.post

    def racing(**kwargs: Any) -> Any:
        openbao_server.client().adapter.post(
            url=kwargs["url"], json={"custom_metadata": {"owner": "someone"}}
        )
        return post(**kwargs)

    monkeypatch.setattr(client.adapter, "post", racing)
    with pytest.raises(StoreConflict, match="check-and-set"):
        store.promote(staged.attempt, NOW)
    monkeypatch.undo()
    assert harness.metadata(store)["custom_metadata"] == {"owner": "someone"}


def test_stale_revision_is_a_conflict(harness: VaultHarness, store: VaultStore) -> None:
    """A stage whose expected revision is stale writes nothing."""
    rotate(store, "sk_one")
    seen = store.read().revision
    harness.write_data(store, {"api_key": "sk_external"})
    with pytest.raises(StoreConflict):
        store.stage(Secret("sk_two"), Stamp("k", Secret("sk_two").fingerprint, "a"), expected=seen)
    assert harness.latest_version(store) == 2


def test_non_string_field_is_a_format_error(harness: VaultHarness, store: VaultStore) -> None:
    """A field holding a number is a StoreFormatError naming the secret and the field."""
    harness.write_data(store, {"api_key": 12345})
    with pytest.raises(StoreFormatError, match=r"api_key.*int, not a string"):
        store.read()


def test_approle_login(
    openbao_server: OpenBaoServer, harness: VaultHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store logs in with AppRole from env vars and can stage, promote and check access."""
    root = openbao_server.client()
    if "approle/" not in root.sys.list_auth_methods()["data"]:
        root.sys.enable_auth_method("approle")
    root.sys.create_or_update_policy(
        name="rotator-approle",
        policy=(
            'path "secret/data/contract/*" { capabilities = ["create", "read", "update"] }\n'
            'path "secret/metadata/contract/*" { capabilities = ["create", "read", "update"] }\n'
        ),
    )
    root.auth.approle.create_or_update_approle("rotator", token_policies=["rotator-approle"])
    role_id = root.auth.approle.read_role_id("rotator")["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id("rotator")["data"]["secret_id"]
    monkeypatch.setenv("ROLE_ID", role_id)
    monkeypatch.setenv("SECRET_ID", secret_id)
    auth = VaultAuth(method="approle", role_id_env="ROLE_ID", secret_id_env="SECRET_ID")
    store = open_store(harness.target(field="api_key", auth=auth), base_dir=harness.base_dir)
    store.check_access()
    rotate(store, "sk_via_approle")
    state = store.read()
    assert state.current is not None and state.current.value == Secret("sk_via_approle")
    monkeypatch.setenv("SECRET_ID", "not-the-secret-id")
    stranger = open_store(store.target, base_dir=harness.base_dir)
    with pytest.raises(StoreAccessDenied, match="log in"):
        stranger.read()


def test_policy_limited_token_is_denied_clearly(
    openbao_server: OpenBaoServer,
    harness: VaultHarness,
    store: VaultStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read-only token reads, but staging and check_access are denied, naming path and policy."""
    rotate(store, "sk_secret_value")
    openbao_server.client().sys.create_or_update_policy(
        name="rotator-read-only",
        policy=(
            f'path "secret/data/{store.target.path}" {{ capabilities = ["read"] }}\n'
            f'path "secret/metadata/{store.target.path}" {{ capabilities = ["read"] }}\n'
        ),
    )
    monkeypatch.setenv("READ_ONLY_TOKEN", openbao_server.token("rotator-read-only"))
    reader = open_store(
        store.target.model_copy(update={"auth": VaultAuth(token_env="READ_ONLY_TOKEN")}),
        base_dir=harness.base_dir,
    )
    state = reader.read()
    assert state.current is not None and state.current.value == Secret("sk_secret_value")
    with pytest.raises(StoreAccessDenied, match="lacks update on secret/data/") as denied:
        reader.check_access()
    assert str(denied.value).startswith(reader.name)
    with pytest.raises(StoreAccessDenied, match="permission denied") as denied:
        stage(reader, "sk_new_value")
    message = str(denied.value)
    assert reader.name in message and f"secret/metadata/{store.target.path}" in message
    assert "sk_new_value" not in message and "sk_secret_value" not in message
    store.check_access()  # the root token may do everything


def test_missing_token_is_access_denied(harness: VaultHarness) -> None:
    """A token env var that is not set is a StoreAccessDenied naming the variable."""
    auth = VaultAuth(token_env="ROTATOR_TEST_NO_SUCH_TOKEN")
    store = open_store(harness.target(auth=auth), base_dir=harness.base_dir)
    with pytest.raises(StoreAccessDenied, match="ROTATOR_TEST_NO_SUCH_TOKEN"):
        store.read()


def test_unreachable_server_is_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server nobody listens on is a transient StoreUnavailable."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("VAULT_TOKEN", "whatever")
    target = VaultTarget(type="vault", url=f"http://127.0.0.1:{port}", path="x")
    with pytest.raises(StoreUnavailable, match="unreachable") as exc:
        open_store(target, base_dir=tmp_path).read()
    assert isinstance(exc.value, Transient)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://vault.example:8200", True),
        ("http://127.0.0.1:8200", True),
        ("http://localhost:8200", True),
        ("http://[::1]:8200", True),
        ("http://vault.example:8200", False),
        ("ftp://127.0.0.1", False),
    ],
)
def test_plain_http_only_to_loopback(url: str, ok: bool, tmp_path: Path) -> None:
    """Only a loopback address may be spoken to without TLS."""
    # validate refuses the bad ones already; the store checks again for specs built in code
    target = VaultTarget(type="vault", url="https://v", path="x").model_copy(update={"url": url})
    if ok:
        assert open_store(target, base_dir=tmp_path).name == "vault:secret/x#value"
    else:
        with pytest.raises(ConfigError, match="https"):
            open_store(target, base_dir=tmp_path)


def test_kubernetes_auth_needs_role_and_token_file(tmp_path: Path) -> None:
    """Kubernetes auth without a role is a ConfigError; a missing JWT file is access denied."""
    base = VaultTarget(type="vault", url="http://127.0.0.1:1", path="x")
    with pytest.raises(ConfigError, match="role"):
        open_store(base.model_copy(update={"auth": VaultAuth(method="kubernetes")}), base_dir=tmp_path)
    auth = VaultAuth(method="kubernetes", role="rotator", jwt_path="no/such/token")
    store = open_store(base.model_copy(update={"auth": auth}), base_dir=tmp_path)
    with pytest.raises(StoreAccessDenied, match="service account token"):
        store.read()
