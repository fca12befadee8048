"""The one contract every consumer honours (``rotator.abc.Consumer``), run unchanged against
each type through its ``consumer_<type>_harness`` fixture (``tests/harnesses/``; the shape:
``tests/consumer_harness.py``).

A random canary stands for a key's value: it is planted in the rotator's environment, under
the names a key and the event's neighbours would have, and every error and log record the
suite provokes is checked for it.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from pathlib import Path

import pytest

from rotator.abc import RollEvent
from rotator.errors import ConsumerError, ConsumerTimeout
from tests.consumer_harness import ConsumerHarness

CANARY = f"cny{uuid.uuid4().hex[:12]}"  # random, so no source line in a traceback holds it


@pytest.fixture(params=["command", "webhook", "kubernetes", "ecs"])
def harness(request: pytest.FixtureRequest) -> ConsumerHarness:
    """The consumer type under test, from its ``consumer_<type>_harness`` fixture."""
    found: ConsumerHarness = request.getfixturevalue(f"consumer_{request.param}_harness")
    return found


def _event(phase: str = "rotation") -> RollEvent:
    tag = uuid.uuid4().hex
    return RollEvent(
        key="payments",
        attempt=f"att-{tag[:16]}",
        phase=phase,  # type: ignore[arg-type]
        key_id=f"key-{tag[16:24]}",
        prefix="adj_live_1a2b",
        fingerprint=tag[:12],
    )


def _chain_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc) + repr(getattr(exc, "__dict__", {}))


def _stop_after(seconds: float) -> threading.Event:
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.daemon = True
    timer.start()
    return stop


def test_a_roll_completes_and_the_workload_sees_it_once(harness: ConsumerHarness) -> None:
    """One roll: the workload saw exactly one, carrying the event's ids."""
    consumer = harness.make_consumer()
    event = _event()
    consumer.roll(event, stop=threading.Event())
    assert harness.rolls(consumer) == [event]


def test_two_rolls_are_two_in_order(harness: ConsumerHarness) -> None:
    """Each roll reaches the workload; none is merged or lost."""
    consumer = harness.make_consumer()
    first, second = _event(), _event("emergency")
    consumer.roll(first, stop=threading.Event())
    consumer.roll(second, stop=threading.Event())
    assert harness.rolls(consumer) == [first, second]


def test_a_fresh_consumer_has_nothing_rolled(harness: ConsumerHarness) -> None:
    """The harness's record is per workload: a roll of one is not seen by another."""
    rolled, other = harness.make_consumer(), harness.make_consumer()
    rolled.roll(_event(), stop=threading.Event())
    assert harness.rolls(other) == []


def test_the_name_is_the_declarations_label_in_every_instance(
    harness: ConsumerHarness, tmp_path: Path
) -> None:
    """The journal keys each roll by name: the same declaration, parsed again, names it the same."""
    consumer = harness.make_consumer()
    spec = harness.declaration(consumer)
    assert consumer.name == spec.label()
    assert consumer.name.startswith(f"{harness.name}:")
    reparsed = type(spec).model_validate(spec.model_dump(mode="json"))
    again = reparsed.make_consumer(key="contract", base_dir=tmp_path)
    assert again.name == consumer.name
    assert again is not consumer


def test_a_failing_roll_is_a_consumer_error_naming_it(harness: ConsumerHarness) -> None:
    """A failure a person must fix is said at once, with the consumer's name; it is no timeout."""
    consumer = harness.failing_consumer()
    started = time.monotonic()
    with pytest.raises(ConsumerError) as caught:
        consumer.roll(_event(), stop=threading.Event())
    assert not isinstance(caught.value, ConsumerTimeout)
    assert caught.value.consumer == consumer.name
    assert consumer.name in str(caught.value)
    assert time.monotonic() - started < 10


def test_a_stuck_roll_times_out_within_its_timeout(harness: ConsumerHarness) -> None:
    """A roll that never completes is a ConsumerTimeout about its timeout, not a hang."""
    consumer = harness.stuck_consumer(1.5)
    started = time.monotonic()
    with pytest.raises(ConsumerTimeout) as caught:
        consumer.roll(_event(), stop=threading.Event())
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 5.0, elapsed
    assert caught.value.consumer == consumer.name


def test_stop_ends_a_roll_within_a_second(harness: ConsumerHarness) -> None:
    """SIGTERM (``stop``) mid-roll returns with a ConsumerError well before the timeout."""
    consumer = harness.stuck_consumer(60)
    stop = _stop_after(0.5)
    started = time.monotonic()
    with pytest.raises(ConsumerError) as caught:
        consumer.roll(_event(), stop=stop)
    assert stop.is_set()
    assert time.monotonic() - started < 0.5 + 1.2
    assert not isinstance(caught.value, ConsumerTimeout)
    assert caught.value.consumer == consumer.name


@pytest.fixture
def canary_env(monkeypatch: pytest.MonkeyPatch) -> str:
    """The canary under the names a key's value has beside a consumer: its own variable, the
    vendor's, a management credential's and a generic token's."""
    for name in ("PAYMENTS", "ADJUDON_API_KEY", "ADJUDON_ADMIN_KEY", "DEPLOY_TOKEN", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, CANARY)
    return CANARY


def test_no_value_reaches_an_error_or_a_log(
    harness: ConsumerHarness, canary_env: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Success, failure, timeout and stop: the canary is in no error and no log record."""
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    harness.make_consumer().roll(_event(), stop=threading.Event())
    for consumer, stop in (
        (harness.failing_consumer(), threading.Event()),
        (harness.stuck_consumer(1.0), threading.Event()),
        (harness.stuck_consumer(60), _stop_after(0.3)),
    ):
        with pytest.raises(ConsumerError) as caught:
            consumer.roll(_event(), stop=stop)
        errors.append(caught.value)
    for exc in errors:
        assert canary_env not in _chain_text(exc)
    for record in caplog.records:
        assert canary_env not in record.getMessage()
        assert canary_env not in repr(record.args)
