"""GCP Secret Manager store and the fake server, beyond the contract suite.

The real ``SecretManagerServiceClient`` speaks gRPC to the fake server in
``tests/fakes``; the contract suite covers the Protocol, these tests the GCP
specifics: aliases, etags, annotations, ``consumers_read: latest``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api_core import exceptions as gexc

from providers.gcp import GcpStore, _is_loopback, open_store
from rotator.abc import Stamp
from rotator.errors import (
    StoreAccessDenied,
    StoreConflict,
    StoreNotFound,
    StoreUnavailable,
)
from rotator.secret import Secret
from tests import test_store_contract as contract
from tests.fakes.gcp_secret_manager import FakeSecretManager
from tests.harnesses.gcp import PROJECT, GcpHarness

NOW = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.fixture
def harness(gcp_server: FakeSecretManager) -> GcpHarness:
    return GcpHarness(gcp_server)


def _stage(store: GcpStore, raw: str, *, key_id: str = "key_1", expected: str | None = None) -> str:
    attempt = str(uuid.uuid4())
    value = Secret(raw)
    store.stage(value, Stamp(key_id, value.fingerprint, attempt), expected=expected)
    return attempt


def _rotate(store: GcpStore, raw: str, **kwargs: Any) -> str:
    attempt = _stage(store, raw, **kwargs)
    store.promote(attempt, NOW)
    return attempt


class _Racing:
    """The real client, with another writer acting just before our first call of ``method``."""

    def __init__(self, client: Any, method: str, other: Callable[[], None]) -> None:
        self._client, self._method, self._other, self.fired = client, method, other, 0

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._client, name)
        if name != self._method or self.fired:
            return real

        def racing(*args: Any, **kwargs: Any) -> Any:
            self.fired += 1
            self._other()
            return real(*args, **kwargs)

        return racing


def test_client_round_trip(gcp_server: FakeSecretManager) -> None:
    """The real client creates, adds and accesses by number, latest and alias."""
    client = gcp_server.client()
    secret = client.create_secret(
        parent=f"projects/{PROJECT}",
        secret_id=f"rt-{uuid.uuid4().hex}",
        secret={"replication": {"automatic": {}}},
    )
    first = client.add_secret_version(parent=secret.name, payload={"data": b"one"})
    client.add_secret_version(parent=secret.name, payload={"data": b"two"})
    updated = client.update_secret(
        secret={"name": secret.name, "version_aliases": {"live": 1}},
        update_mask={"paths": ["version_aliases"]},
    )
    assert updated.etag != secret.etag
    assert client.access_secret_version(name=first.name).payload.data == b"one"
    assert client.access_secret_version(name=f"{secret.name}/versions/latest").payload.data == b"two"
    assert client.access_secret_version(name=f"{secret.name}/versions/live").payload.data == b"one"
    listed = [v.name.rsplit("/", 1)[1] for v in client.list_secret_versions(parent=secret.name)]
    assert listed == ["2", "1"]
    with pytest.raises(gexc.AlreadyExists):
        client.create_secret(
            parent=f"projects/{PROJECT}",
            secret_id=secret.name.split("/")[-1],
            secret={"replication": {"automatic": {}}},
        )
    with pytest.raises(gexc.NotFound):
        client.access_secret_version(name=f"{secret.name}/versions/nosuch")


def test_etag_mismatch_codes(gcp_server: FakeSecretManager) -> None:
    """A stale etag answers FAILED_PRECONDITION (as documented), or ABORTED when told to."""
    client = gcp_server.client()
    secret = client.create_secret(
        parent=f"projects/{PROJECT}",
        secret_id=f"e-{uuid.uuid4().hex}",
        secret={"replication": {"automatic": {}}},
    )
    client.update_secret(
        secret={"name": secret.name, "labels": {"a": "b"}}, update_mask={"paths": ["labels"]}
    )
    stale = {"name": secret.name, "etag": secret.etag, "labels": {"a": "c"}}
    with pytest.raises(gexc.FailedPrecondition):
        client.update_secret(secret=stale, update_mask={"paths": ["labels"]})
    gcp_server.etag_mismatch = grpc.StatusCode.ABORTED
    try:
        with pytest.raises(gexc.Aborted):
            client.update_secret(secret=stale, update_mask={"paths": ["labels"]})
    finally:
        gcp_server.etag_mismatch = grpc.StatusCode.FAILED_PRECONDITION


def test_permission_denied_is_translated(harness: GcpHarness) -> None:
    """PERMISSION_DENIED for a secret becomes StoreAccessDenied naming the target."""
    store = harness.make_store(field="api_key")
    _rotate(store, "k-secret-0001")
    harness.server.denied_secrets.add(harness.path(store))
    try:
        with pytest.raises(StoreAccessDenied, match=r"gcp:rotator-test/contract-\w+#api_key"):
            store.read()
        with pytest.raises(StoreAccessDenied):
            store.check_access()
    finally:
        harness.server.denied_secrets.clear()
    store.check_access()


def test_stale_revision_is_a_conflict(harness: GcpHarness) -> None:
    """A change between read and stage is StoreConflict, unless that attempt is staged already."""
    store = harness.make_store()
    _rotate(store, "k-one")
    state = store.read()
    value = Secret("k-two")
    stamp = Stamp("key_2", value.fingerprint, str(uuid.uuid4()))
    store.stage(value, stamp, expected=state.revision)
    harness.external_write(store, "k-hand")
    store.stage(value, stamp, expected=state.revision)
    with pytest.raises(StoreConflict):
        _stage(store, "k-three", expected=state.revision)
    newest = next(iter(harness.client.list_secret_versions(parent=harness.path(store))))
    assert newest.name.endswith("/3")


@pytest.mark.parametrize("code", [grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED])
def test_etag_race_during_stage(
    harness: GcpHarness, code: grpc.StatusCode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer changing the secret during our UpdateSecret: retry if unconditional."""
    monkeypatch.setattr(harness.server, "etag_mismatch", code)
    store = harness.make_store()
    _rotate(store, "k-one")
    revision = store.read().revision

    def other() -> None:
        harness.client.update_secret(
            secret={"name": harness.path(store), "labels": {"x": "y"}}, update_mask={"paths": ["labels"]}
        )

    racing = _Racing(harness.client, "update_secret", other)
    conditional = open_store(store.target, base_dir=Path(), client=racing)
    with pytest.raises(StoreConflict):
        _stage(conditional, "k-two", expected=revision)
    assert racing.fired == 1 and conditional.read().pending is None

    racing = _Racing(harness.client, "update_secret", other)
    unconditional = open_store(store.target, base_dir=Path(), client=racing)
    _stage(unconditional, "k-two")
    pending = unconditional.read().pending
    assert racing.fired == 1 and pending is not None and pending.value == Secret("k-two")


def test_reserved_number_taken_by_another_writer(harness: GcpHarness) -> None:
    """When another writer adds a version between our reservation and our add, the stamp moves."""
    store = harness.make_store()
    _rotate(store, "k-one")
    racing = _Racing(
        harness.client,
        "add_secret_version",
        lambda: harness.client.add_secret_version(parent=harness.path(store), payload={"data": b"k-other"}),
    )
    racer = open_store(store.target, base_dir=Path(), client=racing)
    attempt = _stage(racer, "k-two")
    state = store.read()
    assert state.pending is not None and state.pending.version == "3"
    assert state.pending.stamp is not None and state.pending.stamp.attempt == attempt
    annotations = harness.client.get_secret(name=harness.path(store)).annotations
    assert "rotator-v2" not in annotations and "rotator-v3" in annotations


def test_lost_add_is_retried_once(harness: GcpHarness) -> None:
    """An add that fails after the reservation leaves no version; the retry adds exactly one."""
    store = harness.make_store()
    _rotate(store, "k-one")
    value = Secret("k-two")
    stamp = Stamp("key_2", value.fingerprint, str(uuid.uuid4()))
    racing = _Racing(
        harness.client, "add_secret_version", lambda: harness.server.inject(grpc.StatusCode.UNAVAILABLE)
    )
    with pytest.raises(StoreUnavailable):
        open_store(store.target, base_dir=Path(), client=racing).stage(value, stamp, expected=None)
    assert store.read().pending is None
    adds = []
    for _ in range(2):
        harness.server.calls.clear()
        store.stage(value, stamp, expected=None)
        adds.append(harness.server.calls.count("AddSecretVersion"))
    assert adds == [1, 0]
    versions = list(harness.client.list_secret_versions(parent=harness.path(store)))
    assert len(versions) == 2
    pending = store.read().pending
    assert pending is not None and pending.stamp == stamp


def test_disable_version(harness: GcpHarness) -> None:
    """disable_version makes the old key's version answer FAILED_PRECONDITION; idempotent."""
    store = harness.make_store()
    old = _rotate(store, "k-old")
    _rotate(store, "k-new")
    store.disable_version(old)
    store.disable_version(old)
    with pytest.raises(gexc.FailedPrecondition):
        harness.client.access_secret_version(name=f"{harness.path(store)}/versions/1")
    current = store.read().current
    assert current is not None and current.value == Secret("k-new")
    with pytest.raises(StoreNotFound):
        store.disable_version(str(uuid.uuid4()))
    with pytest.raises(StoreNotFound):
        store.disable_version("99")


def test_stamps_live_in_annotations_only(harness: GcpHarness) -> None:
    """The canary value is the whole payload; stamps sit in annotations and never hold it."""
    canary = f"canary-{uuid.uuid4().hex}"
    store = harness.make_store()
    attempt = _rotate(store, canary, key_id="key_canary")
    payload = harness.client.access_secret_version(name=f"{harness.path(store)}/versions/1")
    assert payload.payload.data == canary.encode()
    secret = harness.client.get_secret(name=harness.path(store))
    assert canary not in str(secret)
    stamp = json.loads(secret.annotations["rotator-v1"])
    assert stamp["a"] == attempt and stamp["k"] == "key_canary" and "p" in stamp
    assert canary not in repr(store.read())


def test_pruning(harness: GcpHarness) -> None:
    """Stamps of disabled versions go, old ones give way before 16 KiB; others' annotations stay."""
    store = harness.make_store()
    previous = _rotate(store, "k-0")
    theirs = {"owner": "team-a", "rotator-vnote": "kept"}
    annotations = dict(harness.client.get_secret(name=harness.path(store)).annotations)
    harness.client.update_secret(
        secret={"name": harness.path(store), "annotations": {**annotations, **theirs}},
        update_mask={"paths": ["annotations"]},
    )
    for i in range(1, 4):
        attempt = _rotate(store, f"k-{i}")
        store.disable_version(previous)
        previous = attempt
    _rotate(store, "k-4")
    annotations = harness.client.get_secret(name=harness.path(store)).annotations
    assert set(annotations) == {"rotator-v4", "rotator-v5", *theirs}
    assert annotations["rotator-vnote"] == "kept"

    long_id = "key_" + "x" * 400  # ~500 bytes a stamp: about 30 fit in the budget
    for i in range(40):  # abandoned stages pile up above the current version
        _stage(store, f"k-long-{i}", key_id=long_id)
    annotations = harness.client.get_secret(name=harness.path(store)).annotations
    assert sum(len(k) + len(v) for k, v in annotations.items()) < 16 * 1024
    assert {"rotator-v5", "rotator-v45"} <= set(annotations)
    assert "rotator-v4" not in annotations and "rotator-v6" not in annotations
    assert annotations["owner"] == "team-a"
    state = store.read()
    assert state.current is not None and state.current.stamp is not None
    assert state.pending is not None and state.pending.version == "45"


def test_mismatched_stamp_is_ignored(harness: GcpHarness) -> None:
    """A stamp whose fingerprint is not the version's value's is not believed."""
    store = harness.make_store()
    harness.external_write(store, "k-hand")
    harness.client.add_secret_version(parent=harness.path(store), payload={"data": b"k-other"})
    forged = Stamp("key_9", Secret("k-elsewhere").fingerprint, str(uuid.uuid4()))
    harness.client.update_secret(
        secret={
            "name": harness.path(store),
            "annotations": {
                "rotator-v1": '{"k":"key_9","f":"000000000000","a":"x","p":"2025-01-01T00:00:00Z"}',
                "rotator-v2": json.dumps({"k": forged.key_id, "f": forged.fingerprint, "a": forged.attempt}),
            },
        },
        update_mask={"paths": ["annotations"]},
    )
    state = store.read()
    assert state.current is not None and state.current.stamp is None
    assert state.pending is None
    with pytest.raises(StoreNotFound):
        store.promote(forged.attempt, NOW)


def test_consumers_read_latest(gcp_server: FakeSecretManager) -> None:
    """With consumers_read latest, staging is visible at once; the alias keeps the rotator's view."""
    harness = GcpHarness(gcp_server, consumers_read="latest")
    store = harness.make_store(field="api_key")
    harness.external_write(store, json.dumps({"api_key": "k-hand", "region": "eu"}))
    attempt = _stage(store, "k-new")
    assert json.loads(harness.read_raw(store) or "") == {"api_key": "k-new", "region": "eu"}
    state = store.read()
    assert state.current is not None and state.current.value == Secret("k-hand")
    assert state.pending is not None and state.pending.value == Secret("k-new")

    harness.external_write(store, json.dumps({"api_key": "k-hand", "region": "us"}))
    state = store.read()
    assert state.current is not None and state.current.value == Secret("k-hand")
    assert state.current.version == "3" and state.pending is not None

    store.promote(attempt, NOW)  # consumers read version 3: ours goes on top again
    assert json.loads(harness.read_raw(store) or "") == {"api_key": "k-new", "region": "us"}
    state = store.read()
    assert state.pending is None and state.current is not None
    assert state.current.version == "4" and state.current.stamp is not None
    assert state.current.stamp.promoted_at == NOW
    store.promote(attempt, NOW)
    assert len(list(harness.client.list_secret_versions(parent=harness.path(store)))) == 4


_CONTRACT = {name: case for name, case in vars(contract).items() if name.startswith("test_")}


@pytest.mark.parametrize("case", list(_CONTRACT.values()), ids=list(_CONTRACT))
def test_contract_with_consumers_reading_latest(
    gcp_server: FakeSecretManager, case: Callable[[GcpHarness], None]
) -> None:
    """The whole store contract holds when consumers read ``latest`` instead of the alias."""
    harness = GcpHarness(gcp_server, consumers_read="latest")
    assert not harness.invisible_staging
    case(harness)


def test_unavailable_is_retried_then_reported(harness: GcpHarness) -> None:
    """UNAVAILABLE is retried within a budget for reads, then becomes StoreUnavailable."""
    made = harness.make_store()
    store = GcpStore(made.target, harness.client, timeout=2.0, retry_budget=0.5)
    harness.server.inject(grpc.StatusCode.UNAVAILABLE, times=2)
    assert store.read().current is None
    harness.server.inject(grpc.StatusCode.UNAVAILABLE, times=10_000)
    try:
        with pytest.raises(StoreUnavailable, match=r"UNAVAILABLE|RetryError"):
            store.read()
    finally:
        harness.server.heal()


def test_open_store_by_endpoint(gcp_server: FakeSecretManager) -> None:
    """A loopback endpoint is spoken to in plaintext with anonymous credentials."""
    target = GcpHarness(gcp_server).target(f"ep-{uuid.uuid4().hex}")
    store = open_store(target, base_dir=Path())
    _rotate(store, "k-endpoint")
    current = store.read().current
    assert current is not None and current.value == Secret("k-endpoint")
    store._client.transport.close()


def test_remote_endpoint_needs_credentials(
    gcp_server: FakeSecretManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any other endpoint takes TLS and application default credentials, or says none exist."""
    assert _is_loopback("127.0.0.1:8085") and _is_loopback("localhost:1")
    assert _is_loopback("[::1]:443") and not _is_loopback("secretmanager.googleapis.com:443")
    target = GcpHarness(gcp_server).target("remote").model_copy(update={"endpoint": "sm.example.com:443"})
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(StoreAccessDenied, match="application default credentials"):
        open_store(target, base_dir=Path()).read()
    adc = tmp_path / "adc.json"
    adc.write_text(
        json.dumps({"type": "authorized_user", "client_id": "c", "client_secret": "s", "refresh_token": "r"})
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    client = open_store(target, base_dir=Path())._client
    assert client.api_endpoint == "sm.example.com:443"
    client.transport.close()
