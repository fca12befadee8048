"""The one contract every secret store honours, run unchanged against each backend.

The ``harness`` fixture is parametrized over the backends, the in-memory one
first (``providers/memory.py``: the contract with no server in the way); each comes from
``tests/harnesses/<backend>.py`` (its shape: ``tests/store_harness.py``). Besides
that shape, a harness may declare:

* ``invisible_staging: bool`` (default ``True``). ``False`` for backends where
  a newly written version is at once what consumers read (Vault KV v2, GCP with
  ``consumers_read: latest``): staging there cannot hide the new value, so the
  staging test checks that consumers see it instead of checking that they don't.
* ``reopen(store)``: a new store object for the same secret, sharing no state
  with ``store`` (what a fresh process sees). Without it the tests read through
  the same object again.

Every value written contains a random canary; every error the suite provokes
is checked, with its whole chain, for the canary and for the store's name.
"""

from __future__ import annotations

import json
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest

from rotator.abc import SecretStore, Stamp
from rotator.errors import (
    StoreAccessDenied,
    StoreConflict,
    StoreError,
    StoreFormatError,
    StoreNotFound,
)
from rotator.secret import Secret, fingerprint
from tests.store_harness import StoreHarness

CANARY = f"cny{uuid.uuid4().hex[:12]}"  # random, so no source line in a traceback holds it


@pytest.fixture(
    params=["memory", "file", "aws", pytest.param("vault", marks=pytest.mark.openbao), "gcp", "kubernetes"]
)
def harness(request: pytest.FixtureRequest) -> StoreHarness:
    """The backend under test, from its ``<backend>_harness`` fixture."""
    found: StoreHarness = request.getfixturevalue(f"{request.param}_harness")
    return found


def _value(tag: str) -> Secret:
    return Secret(f"{CANARY}_{tag}_{uuid.uuid4().hex}")


def _stamp(value: Secret, attempt: str | None = None) -> Stamp:
    return Stamp(
        key_id=f"key-{uuid.uuid4().hex[:8]}",
        fingerprint=value.fingerprint,
        attempt=attempt or str(uuid.uuid4()),
    )


def _reopen(harness: StoreHarness, store: SecretStore) -> SecretStore:
    reopen = getattr(harness, "reopen", None)
    fresh: SecretStore = reopen(store) if reopen is not None else store
    return fresh


def _check_error(exc: BaseException, store: SecretStore) -> None:
    """The error names the store and shows no value, anywhere in its chain."""
    whole = "".join(traceback.format_exception(exc)) + repr(exc)
    assert CANARY not in whole, f"a raw value leaked into {type(exc).__name__}"
    assert store.name in str(exc), f"{type(exc).__name__} does not name {store.name}: {exc}"


@contextmanager
def _raises(kind: type[StoreError], store: SecretStore) -> Iterator[None]:
    with pytest.raises(kind) as info:
        yield
    _check_error(info.value, store)


def _stage_and_promote(store: SecretStore, value: Secret, stamp: Stamp) -> datetime:
    store.stage(value, stamp, expected=store.read().revision)
    promoted_at = datetime.now(UTC)
    store.promote(stamp.attempt, promoted_at)
    return promoted_at


def test_missing_secret_reads_empty(harness: StoreHarness) -> None:
    """A secret that does not exist reads as no current and no pending version."""
    for store in (harness.make_store(), harness.make_store(field="api_key")):
        state = store.read()
        assert (state.current, state.pending) == (None, None)
        assert not state.exists


def test_stage_leaves_current_alone(harness: StoreHarness) -> None:
    """A staged value is pending; consumers keep reading the old one where the backend can."""
    store = harness.make_store()
    old, new = _value("old"), _value("new")
    harness.external_write(store, old.reveal())
    before, raw_before = store.read(), harness.read_raw(store)
    stamp = _stamp(new)
    store.stage(new, stamp, expected=before.revision)
    after = store.read()
    assert after.pending is not None
    assert after.pending.value == new and after.pending.stamp == stamp
    assert after.revision != before.revision
    if getattr(harness, "invisible_staging", True):
        assert after.current is not None and before.current is not None
        assert after.current.value == old
        assert after.current.version == before.current.version
        assert harness.read_raw(store) == raw_before
    else:
        raw_after = harness.read_raw(store)
        assert raw_after is not None and new.reveal() in raw_after


def test_promote_survives_a_fresh_process(harness: StoreHarness) -> None:
    """After promote, a new store object sees the value current with its stamp and promoted_at."""
    store = harness.make_store()
    value = _value("key")
    stamp = _stamp(value)
    promoted_at = _stage_and_promote(store, value, stamp)
    state = _reopen(harness, store).read()
    assert state.pending is None
    assert state.current is not None and state.current.value == value
    assert state.current.stamp == Stamp(stamp.key_id, stamp.fingerprint, stamp.attempt, promoted_at)
    raw = harness.read_raw(store)
    assert raw is not None and raw.strip() == value.reveal()


def test_read_back_fingerprint(harness: StoreHarness) -> None:
    """What consumers read back has the fingerprint the stamp records."""
    store = harness.make_store(field="api_key")
    value = _value("key")
    _stage_and_promote(store, value, _stamp(value))
    current = _reopen(harness, store).read().current
    assert current is not None and current.stamp is not None
    assert current.fingerprint == current.stamp.fingerprint == value.fingerprint
    raw = harness.read_raw(store)
    assert raw is not None and fingerprint(json.loads(raw)["api_key"]) == value.fingerprint


def test_restage_same_attempt_is_idempotent(harness: StoreHarness) -> None:
    """Staging the same attempt again writes nothing, even with a stale expected revision."""
    store = harness.make_store()
    value = _value("key")
    stamp = _stamp(value)
    stale = store.read().revision
    store.stage(value, stamp, expected=stale)
    first = store.read()
    store.stage(value, stamp, expected=stale)
    second = store.read()
    assert first.pending is not None and second.pending is not None
    assert second.pending.version == first.pending.version
    assert second.revision == first.revision
    store.promote(stamp.attempt, datetime.now(UTC))
    promoted = store.read()
    store.stage(value, stamp, expected=stale)
    again = store.read()
    assert again.pending is None and again.current is not None and promoted.current is not None
    assert again.current.version == promoted.current.version


def test_concurrent_writer_is_a_conflict(harness: StoreHarness) -> None:
    """A write by someone else between read and stage raises StoreConflict and writes nothing."""
    store = harness.make_store()
    harness.external_write(store, _value("first").reveal())
    seen = store.read()
    theirs = _value("theirs").reveal()
    harness.external_write(store, theirs)
    ours = _value("ours")
    with _raises(StoreConflict, store):
        store.stage(ours, _stamp(ours), expected=seen.revision)
    after = store.read()
    assert after.pending is None
    assert after.current is not None and after.current.value.reveal() == theirs
    assert harness.read_raw(store) == theirs


def test_field_merge_keeps_other_fields(harness: StoreHarness) -> None:
    """Writing one field of a JSON secret keeps every other field as it was."""
    store = harness.make_store(field="api_key")
    old, new = _value("old"), _value("new")
    others = {"region": "eu-central-1", "user": "payments"}
    harness.external_write(store, json.dumps({"api_key": old.reveal(), **others}))
    current = store.read().current
    assert current is not None and current.value == old
    _stage_and_promote(store, new, _stamp(new))
    raw = harness.read_raw(store)
    assert raw is not None and json.loads(raw) == {"api_key": new.reveal(), **others}
    current = store.read().current
    assert current is not None and current.value == new


def test_unstamped_value_is_adopted(harness: StoreHarness) -> None:
    """A value put there by hand reads as the current version, without a stamp."""
    store = harness.make_store()
    value = _value("by-hand")
    harness.external_write(store, value.reveal())
    state = store.read()
    assert state.pending is None
    assert state.current is not None
    assert state.current.value == value and state.current.stamp is None


def test_secret_deleted_mid_rotation(harness: StoreHarness) -> None:
    """A secret deleted between stage and promote makes promote StoreNotFound and reads empty."""
    store = harness.make_store()
    value = _value("key")
    stamp = _stamp(value)
    store.stage(value, stamp, expected=None)
    harness.delete(store)
    with _raises(StoreNotFound, store):
        store.promote(stamp.attempt, datetime.now(UTC))
    state = store.read()
    assert (state.current, state.pending) == (None, None)


def test_access_denied(harness: StoreHarness) -> None:
    """Credentials that may not touch the secret give StoreAccessDenied naming the store."""
    store = harness.make_store()
    value = _value("key")
    _stage_and_promote(store, value, _stamp(value))
    denied = harness.denied_store(store)
    with _raises(StoreAccessDenied, denied):
        denied.read()
    other = _value("other")
    with _raises(StoreAccessDenied, denied):
        denied.stage(other, _stamp(other), expected=None)


def test_not_json_with_a_field(harness: StoreHarness) -> None:
    """With a field set, a secret that is not a JSON object is a StoreFormatError."""
    store = harness.make_store(field="api_key")
    harness.external_write(store, f"{CANARY} is not JSON {{")
    with _raises(StoreFormatError, store):
        store.read()
    value = _value("key")
    with _raises(StoreFormatError, store):
        store.stage(value, _stamp(value), expected=None)


def test_promote_unknown_attempt(harness: StoreHarness) -> None:
    """Promoting an attempt that staged nothing is StoreNotFound and changes nothing."""
    store = harness.make_store()
    value = _value("key")
    stamp = _stamp(value)
    store.stage(value, stamp, expected=None)
    with _raises(StoreNotFound, store):
        store.promote(str(uuid.uuid4()), datetime.now(UTC))
    state = store.read()
    assert state.pending is not None and state.pending.stamp is not None
    assert state.pending.stamp.attempt == stamp.attempt
    assert state.current is None


def test_second_rotation(harness: StoreHarness) -> None:
    """A second stage and promote after the first leaves the second attempt current."""
    store = harness.make_store()
    first, second = _value("one"), _value("two")
    _stage_and_promote(store, first, _stamp(first))
    stamp = _stamp(second)
    _stage_and_promote(store, second, stamp)
    state = _reopen(harness, store).read()
    assert state.pending is None
    assert state.current is not None and state.current.stamp is not None
    assert state.current.value == second and state.current.stamp.attempt == stamp.attempt
    raw = harness.read_raw(store)
    assert raw is not None and raw.strip() == second.reveal()


def test_errors_never_show_values(harness: StoreHarness) -> None:
    """Errors raised while a store holds current, pending and planted values never show them."""
    store = harness.make_store(field="api_key")
    current, pending = _value("current"), _value("pending")
    _stage_and_promote(store, current, _stamp(current))
    seen = store.read()
    store.stage(pending, _stamp(pending), expected=seen.revision)
    late = _value("late")
    failures: list[BaseException] = []
    for provoke in (
        lambda: store.stage(late, _stamp(late), expected=seen.revision),
        lambda: store.promote(str(uuid.uuid4()), datetime.now(UTC)),
        lambda: harness.external_write(store, f"[{CANARY!r}, {pending.reveal()!r}]"),
        store.read,
    ):
        try:
            provoke()
        except StoreError as exc:
            failures.append(exc)
    assert [type(e) for e in failures] == [StoreConflict, StoreNotFound, StoreFormatError]
    for error in failures:
        _check_error(error, store)
