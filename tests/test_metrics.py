"""Metrics: values derived from pass results and the audit journal, exposition, Pushgateway."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import rotator.audit
from rotator.engine.runner import Engine, KeyResult
from rotator.errors import RotatorError
from rotator.metrics import Metrics, key_birth, phase_durations
from rotator.sandbox.emulator import EmulatorServer
from rotator.spec import Settings, load_rotation_file
from tests.conftest import run_cli
from tests.e2e_helpers import ADMIN_ENV, write_spec

FAST = Settings(retry_initial=0.01, retry_attempts=2, probe_timeout=5)
T0 = datetime(2024, 5, 1, 3, 0, tzinfo=UTC)
A, B = "0b6a3c1e-8f4d-4e2a-9c7b-1d2e3f4a5b6c", "7c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
NAMES = (
    "rotator_rotations_total",
    "rotator_key_age_seconds",
    "rotator_key_max_age_seconds",
    "rotator_key_phase",
    "rotator_last_success_timestamp_seconds",
    "rotator_phase_duration_seconds",
    "rotator_pass_duration_seconds",
)


class Clock:
    """The journal's clock, moved by hand so entries carry chosen timestamps."""

    now = T0

    def at(self, seconds: float) -> None:
        self.now = T0 + timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()

    class JournalTime(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return c.now

    monkeypatch.setattr(rotator.audit, "datetime", JournalTime)
    return c


@pytest.fixture
def engine(tmp_path: Path, emulator: EmulatorServer) -> Iterator[Engine]:
    path = write_spec(tmp_path, emulator, targets=1)
    with Engine(load_rotation_file(path), base_dir=tmp_path, settings=FAST) as e:
        yield e


def _write(engine: Engine, clock: Clock, rows: Sequence[tuple[float, str, str | None]]) -> None:
    for seconds, event, attempt in rows:
        clock.at(seconds)
        engine.journal.append(event, key="payments", attempt=attempt, key_id="key_1")


def _samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(m.exposition().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _get(m: Metrics, name: str, **labels: str) -> float | None:
    return _samples(m).get((name, tuple(sorted(labels.items()))))


OVERLAP = [
    (0, "minted", B),  # an older rotation, fully done: must not be the one reported
    (1, "staged", B),
    (2, "promoted", B),
    (9, "revoked", None),
    (100, "minted", A),
    (101, "staged", A),
    (103, "staged", A),
    (105, "promoted", A),
    (165, "revoked", None),
]


def test_phase_durations_of_the_latest_rotation(engine: Engine, clock: Clock) -> None:
    """minted 1 s, staged 4 s, draining 60 s, from the latest attempt's journal entries."""
    _write(engine, clock, OVERLAP)
    entries = list(engine.journal.entries("payments"))
    assert phase_durations(entries) == {"minted": 1.0, "staged": 4.0, "draining": 60.0}
    assert key_birth(entries) == (T0 + timedelta(seconds=100)).timestamp()

    m = Metrics()
    m.observe_results(engine, [KeyResult("payments", "ok", "current", "done", ["revoke"])])
    assert _get(m, "rotator_phase_duration_seconds", key="payments", phase="minted") == 1.0
    assert _get(m, "rotator_phase_duration_seconds", key="payments", phase="staged") == 4.0
    assert _get(m, "rotator_phase_duration_seconds", key="payments", phase="draining") == 60.0
    age = _get(m, "rotator_key_age_seconds", key="payments")
    expected = (datetime.now(UTC) - T0).total_seconds() - 100
    assert age is not None and abs(age - expected) < 5
    assert _get(m, "rotator_rotations_total", key="payments", result="completed") == 1


def test_a_drain_in_progress_has_no_draining_duration(engine: Engine, clock: Clock) -> None:
    """While draining: minted and staged are known, draining is absent, the pass counts as waiting."""
    _write(engine, clock, OVERLAP)
    m = Metrics()
    m.observe_results(engine, [KeyResult("payments", "ok", "current", "done", ["revoke"])])
    assert _get(m, "rotator_phase_duration_seconds", key="payments", phase="draining") == 60.0
    c = "3e4f5a6b-7c8d-4e9f-8a0b-1c2d3e4f5a6b"
    _write(engine, clock, [(200, "minted", c), (201, "staged", c), (230, "promoted", c)])
    result = KeyResult("payments", "waiting", "draining", "draining", ["mint", "promote"])
    m.observe_results(engine, [result])
    assert _get(m, "rotator_phase_duration_seconds", key="payments", phase="minted") == 1.0
    assert _get(m, "rotator_phase_duration_seconds", key="payments", phase="staged") == 29.0
    assert _get(m, "rotator_phase_duration_seconds", key="payments", phase="draining") is None
    assert _get(m, "rotator_rotations_total", key="payments", result="waiting") == 1
    assert _get(m, "rotator_key_phase", key="payments", phase="draining") == 1
    assert _get(m, "rotator_key_phase", key="payments", phase="current") == 0


def test_completed_counts_only_revokes_since_the_pass_started(engine: Engine, clock: Clock) -> None:
    """With the pass's start, a revoke from an earlier pass is not counted as completed again."""
    _write(engine, clock, OVERLAP)
    m = Metrics()
    later = (T0 + timedelta(seconds=166)).timestamp()
    m.observe_results(engine, [KeyResult("payments", "failed", "failed", "vendor down")], started=later)
    assert _get(m, "rotator_rotations_total", key="payments", result="completed") is None
    assert _get(m, "rotator_rotations_total", key="payments", result="failed") == 1
    assert (_get(m, "rotator_pass_duration_seconds_count") or 0) == 1
    assert _get(m, "rotator_last_success_timestamp_seconds", key="payments") is None

    earlier = (T0 + timedelta(seconds=150)).timestamp()
    m.observe_results(engine, [KeyResult("payments", "ok", "current", "done", ["revoke"])], started=earlier)
    assert _get(m, "rotator_rotations_total", key="payments", result="completed") == 1
    success = _get(m, "rotator_last_success_timestamp_seconds", key="payments")
    assert success is not None and abs(success - datetime.now(UTC).timestamp()) < 5


def test_an_orphan_revoke_is_not_a_completed_rotation(engine: Engine, clock: Clock) -> None:
    """A pass whose only step revoked an orphan counts as ok, not completed."""
    _write(engine, clock, [*OVERLAP, (300, "minted", "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d")])
    _write(engine, clock, [(400, "orphan-revoked", None)])
    m = Metrics()
    m.observe_results(engine, [KeyResult("payments", "ok", "current", "done", ["revoke"])])
    assert _get(m, "rotator_rotations_total", key="payments", result="completed") is None
    assert _get(m, "rotator_rotations_total", key="payments", result="ok") == 1


def test_cutover_phases_and_age(engine: Engine, clock: Clock) -> None:
    """A reset: reset-started -> reset is the reset phase, reset -> verified is promoted."""
    _write(engine, clock, [(10, "reset-started", A), (10.5, "reset", A), (12, "verified", A)])
    entries = list(engine.journal.entries("payments"))
    assert phase_durations(entries) == {"reset": 0.5, "promoted": 1.5}
    assert key_birth(entries) == (T0 + timedelta(seconds=10.5)).timestamp()


def test_busy_and_held_results(engine: Engine, clock: Clock) -> None:
    """A busy skip changes nothing; each held pass counts, shows phase held and no success."""
    _write(engine, clock, OVERLAP)
    m = Metrics()
    m.observe_results(engine, [KeyResult("payments", "busy", "unknown", "skipped: held by x")])
    assert not any(name[0].startswith("rotator_key_phase") for name in _samples(m))
    assert _get(m, "rotator_rotations_total", key="payments", result="busy") is None
    for _ in range(2):
        m.observe_results(engine, [KeyResult("payments", "held", "held", "needs a person")])
    assert _get(m, "rotator_rotations_total", key="payments", result="held") == 2
    assert _get(m, "rotator_key_phase", key="payments", phase="held") == 1
    assert _get(m, "rotator_last_success_timestamp_seconds", key="payments") is None


def test_max_age_gauge_follows_the_rotation_file(
    tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rotator_key_max_age_seconds is the key's own max_age, else the defaults'; forget drops it."""
    monkeypatch.setenv(ADMIN_ENV, emulator.emulator.bootstrap_workspace_key())
    path = write_spec(tmp_path, emulator, targets=1, max_age="30d")
    m = Metrics()
    with Engine(load_rotation_file(path), base_dir=tmp_path, settings=FAST) as engine:
        m.observe_results(engine, [KeyResult("payments", "held", "held", "needs a person")])
    assert _get(m, "rotator_key_max_age_seconds", key="payments") == 30 * 86400
    path.write_text(path.read_text().replace("    issuer: emu\n", "    issuer: emu\n    max_age: 12h\n", 1))
    with Engine(load_rotation_file(path), base_dir=tmp_path, settings=FAST) as engine:
        assert engine.spec.keys["payments"].max_age is not None
        m.observe_results(engine, [KeyResult("payments", "held", "held", "needs a person")])
    assert _get(m, "rotator_key_max_age_seconds", key="payments") == 12 * 3600
    m.forget("payments")
    assert _get(m, "rotator_key_max_age_seconds", key="payments") is None


def test_forget_drops_a_removed_keys_gauges(engine: Engine, clock: Clock) -> None:
    """A key removed from the file loses its gauges; its counter stays."""
    _write(engine, clock, OVERLAP)
    m = Metrics()
    m.observe_results(engine, [KeyResult("payments", "ok", "current", "done", ["revoke"])])
    m.forget("payments")
    left = {name for name, labels in _samples(m) if ("key", "payments") in labels}
    assert left == {"rotator_rotations_total", "rotator_rotations_created"}


def test_adopted_key_age_comes_from_the_vendor(
    tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key adopted from a target has no minted entry: its age is the vendor's created_at."""
    monkeypatch.setenv(ADMIN_ENV, emulator.emulator.bootstrap_workspace_key())
    raw = emulator.emulator.create_agent_key("payments")
    path = write_spec(tmp_path, emulator, targets=1)
    (tmp_path / "secrets/a.env").write_text(f"ADJUDON_API_KEY={raw}\n")
    with Engine(load_rotation_file(path), base_dir=tmp_path, settings=FAST) as engine:
        results = engine.apply(["payments"])
        assert results[0].outcome == "ok" and "mint" not in results[0].steps
        assert key_birth(list(engine.journal.entries("payments"))) is None
        m = Metrics()
        m.observe_results(engine, results)
    age = _get(m, "rotator_key_age_seconds", key="payments")
    assert age is not None and 0 <= age < 30
    text = m.exposition().decode()
    assert raw not in text and raw[:20] not in text


def test_exposition_names_every_metric(engine: Engine, clock: Clock) -> None:
    """After one pass the text exposition carries all six metric names."""
    _write(engine, clock, OVERLAP)
    m = Metrics()
    started = (T0 + timedelta(seconds=150)).timestamp()
    m.observe_results(engine, [KeyResult("payments", "ok", "current", "done", ["revoke"])], started=started)
    text = m.exposition().decode()
    for name in NAMES:
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
    assert 'rotator_rotations_total{key="payments",result="completed"} 1.0' in text


# ---------------------------------------------------------------------- Pushgateway


class Gateway:
    """A stand-in Pushgateway on loopback that records each request."""

    def __init__(self, status: int = 200) -> None:
        self.requests: list[tuple[str, str, bytes]] = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                self._record()

            def do_POST(self) -> None:
                self._record()

            def _record(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                gateway.requests.append((self.command, self.path, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    g = Gateway()
    yield g
    g.close()


@pytest.fixture
def broken_gateway() -> Iterator[Gateway]:
    g = Gateway(status=500)
    yield g
    g.close()


def test_push_sends_the_registry(engine: Engine, clock: Clock, gateway: Gateway) -> None:
    """push() PUTs the exposition to /metrics/job/<job>."""
    _write(engine, clock, OVERLAP)
    m = Metrics()
    m.observe_results(engine, [KeyResult("payments", "ok", "current", "done", ["revoke"])])
    m.push(gateway.url, job="nightly")
    [(method, path, body)] = gateway.requests
    assert (method, path) == ("PUT", "/metrics/job/nightly")
    assert b'rotator_rotations_total{key="payments",result="completed"} 1.0' in body


def test_push_failure_is_one_line(broken_gateway: Gateway) -> None:
    """A gateway answering 500 is a RotatorError of one line naming the gateway."""
    with pytest.raises(RotatorError) as info:
        Metrics().push(broken_gateway.url)
    assert broken_gateway.url in str(info.value) and "\n" not in str(info.value)
    assert len(broken_gateway.requests) == 1


def test_cli_pushes_after_apply_and_rotate(
    tmp_path: Path, emulator: EmulatorServer, gateway: Gateway, broken_gateway: Gateway
) -> None:
    """apply and rotate --pushgateway push the pass's metrics; a failing push only warns."""
    write_spec(tmp_path, emulator, targets=1)
    env = {ADMIN_ENV: emulator.emulator.bootstrap_workspace_key(), "ROTATOR_RETRY_INITIAL": "0.01"}
    first = run_cli("apply", "--pushgateway", gateway.url, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert "warning" not in first.stderr
    [(method, path, body)] = gateway.requests
    assert (method, path) == ("PUT", "/metrics/job/rotator")
    assert b'rotator_rotations_total{key="payments",result="ok"} 1.0' in body
    assert b'rotator_key_phase{key="payments",phase="current"} 1.0' in body
    assert b"rotator_pass_duration_seconds_count 1.0" in body

    second = run_cli("rotate", "payments", "--pushgateway", broken_gateway.url, cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stderr
    assert "payments: waiting" in second.stdout
    warnings = [line for line in second.stderr.splitlines() if "warning" in line]
    assert warnings == [
        f"rotator: warning: cannot push metrics to {broken_gateway.url}: HTTP Error 500: Internal Server Error"
    ]
    assert len(broken_gateway.requests) == 1
