"""`--wait` at a terminal: drains of any length, its own timeout, transient errors, Ctrl-C and
the lease another runner holds (`--lock-timeout`, exit 4)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from rotator.abc import parse_time
from rotator.engine.model import Decision
from rotator.engine.runner import MAX_STEPS, WAIT_POLL, Engine
from rotator.sandbox.emulator import Emulator, EmulatorServer
from rotator.spec import Settings, load_rotation_file
from tests.e2e_helpers import (
    ADMIN_ENV,
    FakeClock,
    agent_keys,
    journal,
    read_dotenv_key,
    write_spec,
)

FAST = Settings(retry_initial=0.01, probe_timeout=5)
DEFAULT_VERIFY = {"drain": "15m", "propagation": "2m", "timeout": "24h"}
"""The README's default `verify` block."""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake_vendor(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorServer]:
    """The emulator on the same fake clock as the engine, with a workspace admin key."""
    with EmulatorServer(Emulator(clock=clock)) as server:
        monkeypatch.setenv(ADMIN_ENV, server.emulator.bootstrap_workspace_key())
        yield server


class LateConsumer:
    """A consumer that keeps calling with the old key for ``lag`` after promotion, then
    moves to the new one; it calls once per engine sleep (the fake clock's tick)."""

    def __init__(self, server: EmulatorServer, clock: FakeClock, lag: timedelta) -> None:
        self.clock, self.lag = clock, lag
        self.http = httpx.Client(base_url=server.url, timeout=5)
        self.old: str | None = None
        self.promoted_at: datetime | None = None
        self.waits: list[Decision] = []
        self.old_calls = 0

    def progress(self, key: str, decision: Decision) -> None:
        if decision.action == "wait":
            self.waits.append(decision)
            self.promoted_at = self.promoted_at or decision.promoted_at

    def sleep(self, seconds: float) -> None:
        self.clock.sleep(seconds)
        if self.old and self.promoted_at and self.clock.now < self.promoted_at + self.lag:
            answer = self.http.post(
                "/api/v1/traces", json={"event": "t"}, headers={"Authorization": f"Bearer {self.old}"}
            )
            assert answer.status_code == 201
            self.old_calls += 1


def _engine(path: Path, clock: FakeClock, sleep: object = None) -> Engine:
    return Engine(
        load_rotation_file(path),
        base_dir=path.parent,
        settings=FAST,
        clock=clock,
        sleep=sleep if callable(sleep) else clock.sleep,
    )


def _key(server: EmulatorServer, key_id: str) -> dict[str, object]:
    return next(k for k in agent_keys(server) if k["id"] == key_id)


def test_wait_follows_default_15m_drain_on_fake_clock(
    tmp_path: Path, clock: FakeClock, fake_vendor: EmulatorServer
) -> None:
    """`--wait` follows the default 15 m drain to the revoke: its polls are not steps, and the
    old key, used until 90 s after promotion, is revoked 2 m + 15 m after it, not before."""
    path = write_spec(tmp_path, fake_vendor, **DEFAULT_VERIFY)
    consumer = LateConsumer(fake_vendor, clock, lag=timedelta(seconds=90))
    with _engine(path, clock, consumer.sleep) as engine:
        assert engine.apply(["payments"])[0].steps == ["mint", "stage", "promote"]
        consumer.old = read_dotenv_key(tmp_path / "secrets/a.env")
        (old_id,) = (k["id"] for k in agent_keys(fake_vendor, active=True))
        result = engine.apply(["payments"], force=True, wait=True, progress=consumer.progress)[0]

    assert result.outcome == "ok", result.message
    assert result.steps == ["mint", "stage", "promote", "revoke"]
    assert consumer.promoted_at is not None and consumer.old_calls > 10
    old = _key(fake_vendor, old_id)
    last_used = parse_time(str(old["last_used_at"]))
    revoked_at = parse_time(str(old["revoked_at"]))
    assert last_used >= consumer.promoted_at + timedelta(seconds=85)
    ready = consumer.promoted_at + timedelta(minutes=17)  # propagation 2m + drain 15m
    assert ready <= revoked_at <= ready + timedelta(seconds=WAIT_POLL + 1)
    # the live countdown: every poll reports the drain's end, and there were far more polls
    # than the step cap
    assert len(consumer.waits) > 4 * MAX_STEPS
    assert all(d.until is not None and d.until <= ready for d in consumer.waits)
    assert {d.phase for d in consumer.waits} == {"promoted", "draining"}
    assert not [e for e in journal(tmp_path) if e["event"] in ("failed", "held")]


def test_wait_timeout_exits_waiting_and_the_rotation_goes_on(
    tmp_path: Path, clock: FakeClock, fake_vendor: EmulatorServer
) -> None:
    """At its --wait-timeout the pass ends `waiting`, says how to resume, records no failure;
    a later pass finishes the drain."""
    path = write_spec(tmp_path, fake_vendor, **DEFAULT_VERIFY)
    with _engine(path, clock) as engine:
        engine.apply(["payments"])
        (old_id,) = (k["id"] for k in agent_keys(fake_vendor, active=True))
        result = engine.apply(["payments"], force=True, wait=True, wait_timeout=timedelta(minutes=5))[0]
        assert (result.outcome, result.phase) == ("waiting", "draining"), result.message
        assert result.steps == ["mint", "stage", "promote"]
        assert "stopped waiting after 5m (--wait-timeout); the rotation goes on" in result.message
        assert "rotator apply payments --wait" in result.message
        assert _key(fake_vendor, old_id)["status"] == "active"
        assert not [e for e in journal(tmp_path) if e["event"] in ("failed", "held")]

        clock.sleep(13 * 60)
        resumed = engine.apply(["payments"])[0]
    assert (resumed.outcome, resumed.steps) == ("ok", ["revoke"]), resumed.message
    assert _key(fake_vendor, old_id)["status"] != "active"


def test_default_wait_timeout_is_verify_timeout_plus_margin(
    tmp_path: Path, clock: FakeClock, fake_vendor: EmulatorServer
) -> None:
    """Unless told, --wait follows a key for its verify.timeout plus ten minutes."""
    path = write_spec(tmp_path, fake_vendor, **DEFAULT_VERIFY)
    with _engine(path, clock) as engine:
        assert engine.default_wait_timeout("payments") == timedelta(hours=24, minutes=10)
