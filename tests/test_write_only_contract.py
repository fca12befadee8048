"""The one contract every write-only target honours, run unchanged against each backend.

The ``harness`` fixture is parametrized over the write-only targets; each comes from
``tests/harnesses/write_only_<type>.py`` (its shape: ``WriteOnlyHarness`` in
``tests/consumer_harness.py``). A write-only target cannot be read back by the rotator, so
each harness reads what its system holds the way only that system can (the function's
configuration; the fake GitHub opening the sealed box with its private key).

Every value written contains a random canary; every error the suite provokes is checked,
with its whole chain, for the canary and for the target's name, and so is every log record.
"""

from __future__ import annotations

import logging
import traceback
import uuid
from collections.abc import Iterator

import pytest

from rotator.abc import Stamp, WriteOnlyTarget
from rotator.errors import StoreAccessDenied, StoreError, StoreNotFound
from rotator.secret import Secret
from tests.consumer_harness import WriteOnlyHarness

CANARY = f"cny{uuid.uuid4().hex[:12]}"  # random, so no source line in a traceback holds it


@pytest.fixture(params=["lambda_env", "github"])
def harness(request: pytest.FixtureRequest) -> WriteOnlyHarness:
    """The write-only target under test, from its ``write_only_<type>_harness`` fixture."""
    found: WriteOnlyHarness = request.getfixturevalue(f"write_only_{request.param}_harness")
    return found


@pytest.fixture(autouse=True)
def no_canary_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Whatever a test does, no log record (message or arguments) holds a value written."""
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.records:
        assert CANARY not in record.getMessage(), f"a value leaked into a log record of {record.name}"
        assert CANARY not in repr(record.args), f"a value leaked into log arguments of {record.name}"


def _value(tag: str) -> Secret:
    return Secret(f"{CANARY}_{tag}_{uuid.uuid4().hex}")


def _stamp(value: Secret) -> Stamp:
    return Stamp(
        key_id=f"key-{uuid.uuid4().hex[:8]}", fingerprint=value.fingerprint, attempt=str(uuid.uuid4())
    )


def _write(target: WriteOnlyTarget, value: Secret) -> None:
    target.write(value, _stamp(value))


def _check_error(exc: BaseException, target: WriteOnlyTarget) -> None:
    """The error names the target and shows no value, anywhere in its chain."""
    whole = "".join(traceback.format_exception(exc)) + repr(exc)
    assert CANARY not in whole, f"a raw value leaked into {type(exc).__name__}"
    assert str(exc).startswith(f"{target.name}: "), f"{type(exc).__name__} does not name {target.name}: {exc}"


def test_a_write_is_what_the_system_holds(harness: WriteOnlyHarness) -> None:
    """After write returns, the target's system holds the value, and everything else it held."""
    target = harness.make_target()
    others = harness.other_content(target)
    assert others, "the harness gives every target other content to keep"
    value = _value("first")
    _write(target, value)
    assert harness.read_back(target) == value.reveal()
    assert harness.other_content(target) == others


def test_a_second_write_replaces_the_first(harness: WriteOnlyHarness) -> None:
    """A new value replaces the old one; the rest is kept."""
    target = harness.make_target()
    others = harness.other_content(target)
    _write(target, _value("old"))
    new = _value("new")
    _write(target, new)
    assert harness.read_back(target) == new.reveal()
    assert harness.other_content(target) == others


def test_writing_the_same_value_again_is_harmless(harness: WriteOnlyHarness) -> None:
    """A retried write (a crash after it, a second pass) leaves the same value in place."""
    target = harness.make_target()
    value = _value("again")
    stamp = _stamp(value)
    target.write(value, stamp)
    target.write(value, stamp)
    assert harness.read_back(target) == value.reveal()


def test_check_access_passes_and_changes_nothing(harness: WriteOnlyHarness) -> None:
    """check_access on a target we may write passes, and leaves what the system holds as it was."""
    target = harness.make_target()
    value = _value("kept")
    _write(target, value)
    others = harness.other_content(target)
    target.check_access()
    assert harness.read_back(target) == value.reveal()
    assert harness.other_content(target) == others


def test_denied_credentials_are_access_denied(harness: WriteOnlyHarness) -> None:
    """Credentials that may not write: StoreAccessDenied from write and check_access, nothing written."""
    target = harness.make_target()
    before = _value("before")
    _write(target, before)
    denied = harness.denied_target(target)
    assert denied.name == target.name
    with pytest.raises(StoreAccessDenied) as info:
        _write(denied, _value("denied"))
    _check_error(info.value, denied)
    with pytest.raises(StoreAccessDenied) as info:
        denied.check_access()
    _check_error(info.value, denied)
    assert harness.read_back(target) == before.reveal()


def test_a_missing_function_or_repository_is_not_found(harness: WriteOnlyHarness) -> None:
    """A target naming what does not exist: StoreNotFound from write and check_access."""
    missing = harness.missing_target()
    with pytest.raises(StoreNotFound) as info:
        _write(missing, _value("nowhere"))
    _check_error(info.value, missing)
    with pytest.raises(StoreNotFound) as info:
        missing.check_access()
    _check_error(info.value, missing)


def test_errors_are_store_errors_naming_the_target(harness: WriteOnlyHarness) -> None:
    """Every failure above is a StoreError: the engine handles write-only targets as stores."""
    missing = harness.missing_target()
    with pytest.raises(StoreError) as info:
        _write(missing, _value("kind"))
    assert info.value.store == missing.name
