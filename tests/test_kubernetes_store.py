"""The kubernetes store beyond the contract suite: what pods see while a key is staged, the
sibling Secret, dry-run access checks, and that no value reaches a log or an error even when
the API server's answers quote one."""

from __future__ import annotations

import base64
import logging
import traceback
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from providers.kubernetes import CURRENT, PENDING, KubernetesStore, open_store
from rotator.abc import Stamp
from rotator.builtin.stores import KubernetesTarget
from rotator.errors import StoreAccessDenied, StoreConflict, StoreError, StoreFormatError, StoreUnavailable
from rotator.secret import Secret
from tests.fakes.kube_api import FakeKubeApi, Rule
from tests.harnesses.kubernetes import NAMESPACE, KubernetesHarness

CANARY = f"cny{uuid.uuid4().hex[:12]}"


@pytest.fixture
def harness(kubernetes_harness: KubernetesHarness) -> KubernetesHarness:
    return kubernetes_harness


def _value(tag: str) -> Secret:
    return Secret(f"{CANARY}_{tag}_{uuid.uuid4().hex}")


def _stamp(value: Secret) -> Stamp:
    return Stamp(f"key-{uuid.uuid4().hex[:6]}", value.fingerprint, str(uuid.uuid4()))


def _secret(api: FakeKubeApi, name: str) -> dict[str, object] | None:
    return api.get("Secret", NAMESPACE, name)


def _decoded(obj: dict[str, object] | None) -> dict[str, str]:
    assert obj is not None
    data = obj.get("data") or {}
    assert isinstance(data, dict)
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def test_staging_changes_nothing_pods_read(harness: KubernetesHarness) -> None:
    """While staged, the Secret's data is untouched (no extra key for envFrom); the value waits
    in the sibling, which is emptied once promoted."""
    store = harness.make_store(field="API_KEY")
    old, new = _value("old"), _value("new")
    harness.external_write(store, f'{{"API_KEY": "{old.reveal()}", "REGION": "eu"}}')
    before = _secret(harness.api, store.target.secret)
    stamp = _stamp(new)
    store.stage(new, stamp, expected=store.read().revision)
    during = _secret(harness.api, store.target.secret)
    assert during is not None and before is not None
    assert during["data"] == before["data"]
    assert Stamp.from_json(during["metadata"]["annotations"][PENDING]) == stamp  # type: ignore[index]
    assert _decoded(_secret(harness.api, store.sibling)) == {"API_KEY": new.reveal()}
    store.promote(stamp.attempt, datetime.now(UTC))
    after = _secret(harness.api, store.target.secret)
    assert _decoded(after) == {"API_KEY": new.reveal(), "REGION": "eu"}
    annotations = after["metadata"]["annotations"]  # type: ignore[index]
    assert PENDING not in annotations and Stamp.from_json(annotations[CURRENT]).attempt == stamp.attempt  # type: ignore[union-attr]
    sibling = _secret(harness.api, store.sibling)
    assert sibling is not None and "data" not in sibling


def test_first_stage_creates_both_secrets(harness: KubernetesHarness) -> None:
    store = harness.make_store()
    value = _value("first")
    store.stage(value, _stamp(value), expected=None)
    main = _secret(harness.api, store.target.secret)
    assert main is not None and "data" not in main
    assert _decoded(_secret(harness.api, store.sibling)) == {"value": value.reveal()}


def test_a_deleted_secret_with_an_expected_revision_is_a_conflict(harness: KubernetesHarness) -> None:
    store = harness.make_store()
    harness.external_write(store, _value("x").reveal())
    seen = store.read().revision
    harness.delete(store)
    value = _value("y")
    with pytest.raises(StoreConflict):
        store.stage(value, _stamp(value), expected=seen)
    assert _secret(harness.api, store.target.secret) is None


def test_a_sibling_the_rotator_did_not_make_is_left_alone(harness: KubernetesHarness) -> None:
    store = harness.make_store()
    theirs = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": store.sibling, "namespace": NAMESPACE},
    }
    harness.api.put({**theirs, "data": {"value": base64.b64encode(b"theirs").decode()}})
    value = _value("ours")
    with pytest.raises(StoreError, match="holds data the rotator did not put there"):
        store.stage(value, _stamp(value), expected=None)
    assert _decoded(_secret(harness.api, store.sibling)) == {"value": "theirs"}


def test_secrets_created_empty_by_hand_are_used(harness: KubernetesHarness) -> None:
    """Both Secrets made beforehand (`kubectl create secret generic NAME`), so RBAC need not
    grant create: the rotator stages and promotes into them."""
    store = harness.make_store()
    for name in (store.target.secret, store.sibling):
        harness.api.put(
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NAMESPACE}}
        )
    value = _value("v")
    stamp = _stamp(value)
    mark = len(harness.api.requests)
    store.stage(value, stamp, expected=store.read().revision)
    store.promote(stamp.attempt, datetime.now(UTC))
    assert _decoded(_secret(harness.api, store.target.secret)) == {"value": value.reveal()}
    assert {r.method for r in harness.api.requests[mark:]} == {"GET", "PATCH"}


def test_an_immutable_secret_is_refused_at_stage(harness: KubernetesHarness) -> None:
    store = harness.make_store()
    harness.external_write(store, _value("old").reveal())
    obj = _secret(harness.api, store.target.secret)
    assert obj is not None
    harness.api.put({**obj, "immutable": True})
    value = _value("new")
    with pytest.raises(StoreError, match="immutable"):
        store.stage(value, _stamp(value), expected=None)


def test_check_access_is_a_dry_run(harness: KubernetesHarness) -> None:
    """check_access writes nothing: missing Secrets are not created, existing ones keep their
    resourceVersion."""
    store = harness.make_store()
    store.check_access()
    assert _secret(harness.api, store.target.secret) is None and _secret(harness.api, store.sibling) is None
    value = _value("v")
    store.stage(value, _stamp(value), expected=None)
    versions = [
        _secret(harness.api, n)["metadata"]["resourceVersion"] for n in (store.target.secret, store.sibling)
    ]  # type: ignore[index]
    store.check_access()
    after = [
        _secret(harness.api, n)["metadata"]["resourceVersion"] for n in (store.target.secret, store.sibling)
    ]  # type: ignore[index]
    assert after == versions
    dry = [
        r for r in harness.api.requests if r.method in ("POST", "PATCH") and r.query.get("dryRun") == ["All"]
    ]
    assert len(dry) == 4


def test_check_access_without_patch(harness: KubernetesHarness, tmp_path: Path) -> None:
    """A token that may read but not write the Secret fails check_access, naming the verb."""
    store = harness.make_store()
    value = _value("v")
    store.stage(value, _stamp(value), expected=None)
    token = f"reader-{uuid.uuid4().hex}"
    names = frozenset({store.target.secret, store.sibling})
    harness.api.add_token(
        token,
        "system:serviceaccount:rotator:rotator",
        rules=[Rule(frozenset({"get"}), "secrets", NAMESPACE, names)],
    )
    reader = open_store(
        store.target.model_copy(update={"kubeconfig": str(harness.api.kubeconfig(tmp_path / "k", token))}),
        base_dir=Path.cwd(),
    )
    assert reader.read().pending is not None
    with pytest.raises(StoreAccessDenied, match="cannot patch resource") as info:
        reader.check_access()
    assert str(info.value).startswith(store.name)


def test_server_errors_are_transient(harness: KubernetesHarness) -> None:
    store = harness.make_store()
    harness.api.inject(503)
    with pytest.raises(StoreUnavailable, match="HTTP 503"):
        store.read()


def test_no_value_reaches_a_log_or_an_error(
    harness: KubernetesHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """A full rotation and every error provoked, logged at DEBUG, never show a value, even when
    the server's error message quotes one (only names-only messages are passed on)."""
    caplog.set_level(logging.DEBUG)
    store = harness.make_store(field="API_KEY")
    first, second, late = _value("first"), _value("second"), _value("late")
    store.stage(first, _stamp(first), expected=None)
    store.promote(store.read().pending.stamp.attempt, datetime.now(UTC))  # type: ignore[union-attr]
    seen = store.read()
    store.stage(second, _stamp(second), expected=seen.revision)
    errors: list[BaseException] = []
    provocations = [
        lambda: store.stage(late, _stamp(late), expected=seen.revision),  # 409-free conflict
        lambda: (
            harness.api.inject(422, message=f'Secret is invalid: Invalid value: "{late.reveal()}"'),
            store.read(),
        ),
        lambda: (harness.api.inject(500, message=f"etcd said {second.reveal()}"), store.read()),
        lambda: (
            harness.api.inject(409, reason="Conflict", message="the object has been modified"),
            store.read(),
        ),
        lambda: (harness.external_write(store, f"[{second.reveal()!r}]"), store.read()),
    ]
    for provoke in provocations:
        with pytest.raises(StoreError) as info:
            provoke()
        errors.append(info.value)
    assert [type(e) for e in errors] == [
        StoreConflict,
        StoreError,
        StoreUnavailable,
        StoreConflict,
        StoreFormatError,
    ]
    for error in errors:
        whole = "".join(traceback.format_exception(error)) + repr(error)
        assert CANARY not in whole
        assert str(error).startswith(store.name)
    assert "HTTP 422 Invalid" in str(errors[1]) and "HTTP 500" in str(errors[2])
    assert CANARY not in caplog.text


def test_plain_http_to_a_remote_server_is_refused(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "k"
    FakeKubeApi().kubeconfig(kubeconfig, "t")
    kubeconfig.write_text(kubeconfig.read_text().replace("server: ''", "server: http://kube.example.com"))
    target = KubernetesTarget.model_validate(
        {"type": "kubernetes", "namespace": "pay", "secret": "s", "kubeconfig": str(kubeconfig)}
    )
    store = open_store(target, base_dir=tmp_path)
    with pytest.raises(StoreError, match="only https, or plain http to a loopback address") as info:
        store.read()
    assert str(info.value).startswith("kubernetes:pay/s#value: ")


def test_a_missing_kubeconfig_is_one_clear_error(tmp_path: Path) -> None:
    target = KubernetesTarget.model_validate(
        {"type": "kubernetes", "namespace": "pay", "secret": "s", "kubeconfig": "nowhere/config"}
    )
    with pytest.raises(StoreError, match=r"kubeconfig .*nowhere/config: no such file"):
        KubernetesStore(target, base_dir=tmp_path).read()
