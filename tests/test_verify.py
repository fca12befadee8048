"""Verify before revoke, cutover crash recovery, and the rotator's own management key."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from rotator.abc import parse_time
from rotator.engine.model import Decision
from rotator.engine.runner import Engine
from rotator.sandbox.demo import Consumer
from rotator.sandbox.emulator import EmulatorServer
from rotator.spec import Settings, load_rotation_file
from tests.conftest import run_cli
from tests.e2e_helpers import (
    ADMIN_ENV,
    VENDOR_CLOCK_SLACK_S,
    adjutor_app_yaml,
    agent_keys,
    journal,
    read_dotenv_key,
    write_rotation_file,
    write_spec,
)

FAST = Settings(retry_initial=0.01, probe_timeout=1)
FAST_ENV = {"ROTATOR_RETRY_INITIAL": "0.01", "ROTATOR_PROBE_TIMEOUT": "2"}


def test_consumer_that_moves_allows_revoke_after_one_drain(
    tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The consumer follows the file: the old key is revoked one drain period after propagation."""
    monkeypatch.setenv(ADMIN_ENV, emulator.emulator.bootstrap_workspace_key())
    path = write_spec(tmp_path, emulator, drain="2s", propagation="1s", targets=1)
    engine = Engine(load_rotation_file(path), base_dir=tmp_path, settings=FAST)
    engine.apply(["payments"])
    consumer = Consumer(tmp_path / "secrets/a.env", emulator.url, interval=0.05)
    consumer.start()
    try:
        result = engine.apply(["payments"], force=True, wait=True)[0]
    finally:
        consumer.stop()
    assert result.outcome == "ok", result.message
    events = journal(tmp_path)
    # both instants from the journal, in one (local) clock: `promoted_at` itself is stamped in
    # the vendor's clock, known only to the second from its `Date` header
    promoted = parse_time([e for e in events if e["event"] == "promoted"][-1]["ts"])
    revoked = parse_time([e for e in events if e["event"] == "revoked"][-1]["ts"])
    waited = (revoked - promoted).total_seconds()
    # propagation 1s + drain 2s, plus at most the vendor clock's slack and a poll
    assert 3.0 <= waited < 4.5 + VENDOR_CLOCK_SLACK_S
    assert consumer.auth_failures == 0


def test_rejected_new_key_stops_before_any_revoke(
    tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the vendor rejects the new key, it is never promoted and the old key is never revoked."""
    admin = emulator.emulator.bootstrap_workspace_key()
    monkeypatch.setenv(ADMIN_ENV, admin)
    path = write_spec(tmp_path, emulator, drain="0s", propagation="0s", targets=2)
    engine = Engine(load_rotation_file(path), base_dir=tmp_path, settings=FAST)
    engine.apply(["payments"])
    old = read_dotenv_key(tmp_path / "secrets/a.env")

    def sabotage(key: str, decision: Decision) -> None:
        if decision.action == "promote":  # someone revokes the new key behind our back
            httpx.delete(
                f"{emulator.url}/api/v1/api-keys/{decision.key_id}",
                headers={"Authorization": f"Bearer {admin}"},
            ).raise_for_status()

    result = engine.apply(["payments"], force=True, progress=sabotage)[0]
    assert result.outcome == "held"
    assert "rejects the new key" in result.message
    assert read_dotenv_key(tmp_path / "secrets/a.env") == old
    assert old is not None and emulator.emulator.key_accepted(old)
    assert not any(e["event"] == "revoked" for e in journal(tmp_path))


def test_kill_between_reset_and_first_write_holds_with_recovery(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    """A reset whose value never reached a store: the next pass holds with exact steps, and does not loop."""
    raw = emulator.emulator.create_app("app_7")
    (tmp_path / "app.key").write_text(raw + "\n")
    text = adjutor_app_yaml(emulator.url, "app_7", ["{type: file, path: app.key}"])
    write_rotation_file(tmp_path, text, secrets=False)
    crashed = run_cli("rotate", "app", cwd=tmp_path, env={**FAST_ENV, "ROTATOR_CRASH_AT": "after-reset"})
    assert crashed.returncode == -signal.SIGKILL
    assert not emulator.emulator.key_accepted(
        raw
    )  # the reset revoked it; the new value died with the process
    before = len(emulator.emulator.request_log())
    for _ in range(2):  # held every time, never another reset
        proc = run_cli("apply", cwd=tmp_path, env=FAST_ENV)
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert "reset happened and its new value never reached a store" in proc.stdout
        assert "bootstrap" in proc.stdout
    resets = [r for r in emulator.emulator.request_log()[before:] if r[1].endswith("/key/reset")]
    assert resets == []
    started = [e for e in journal(tmp_path) if e["event"] == "reset-started"]
    assert len(started) == 1 and started[0]["attempt"]


def test_own_management_key_rotated_last_and_revoked_with_the_new_one(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    """The workspace key that manages keys rotates after the others and revokes itself with its successor."""
    admin = emulator.emulator.bootstrap_workspace_key()
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets/admin.key").write_text(admin + "\n")
    (tmp_path / "rotations.yaml").write_text(f"""\
version: 1
state_dir: state
defaults:
  verify: {{drain: 0s, propagation: 0s, timeout: 30s}}
issuers:
  emu: {{type: adjudon, base_url: "{emulator.url}", credential: {{key: admin}}}}
keys:
  admin:
    issuer: emu
    kind: workspace
    targets: [{{type: file, path: secrets/admin.key}}]
  payments:
    issuer: emu
    kind: agent
    agent_id: payments
    targets: [{{type: file, path: secrets/payments.key}}]
""")
    engine = Engine(load_rotation_file(tmp_path / "rotations.yaml"), base_dir=tmp_path, settings=FAST)
    assert [r.outcome for r in engine.apply(["admin", "payments"])] == ["ok", "ok"]
    results = engine.apply(["admin", "payments"], force=True, wait=True)
    assert [r.outcome for r in results] == ["ok", "ok"], [r.message for r in results]
    new_admin = (tmp_path / "secrets/admin.key").read_text().strip()
    assert new_admin != admin
    assert not emulator.emulator.key_accepted(admin) and emulator.emulator.key_accepted(new_admin)
    events = [(e["event"], e["key"]) for e in journal(tmp_path)]
    forced = events[events.index(("minted", "payments")) :]
    assert forced.index(("revoked", "payments")) < forced.index(("minted", "admin"))  # own key last
    workspace = {k["status"]: k for k in emulator.emulator.adjudon_keys() if k["type"] == "workspace"}
    assert sorted(workspace) == ["active", "revoked"]
    old_key, new_key = workspace["revoked"], workspace["active"]
    # the DELETE that revoked the old key was authenticated by the new one
    assert parse_time(old_key["last_used_at"]) < parse_time(old_key["revoked_at"])
    assert parse_time(new_key["last_used_at"]) >= parse_time(old_key["revoked_at"])
    assert len(agent_keys(emulator, active=True)) == 1


def test_lost_lease_stops_between_steps(
    tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewable lease that reports it was lost ends the pass before the next step, and is a failure."""
    import threading
    from collections.abc import Iterator
    from contextlib import contextmanager
    from types import SimpleNamespace

    monkeypatch.setenv(ADMIN_ENV, emulator.emulator.bootstrap_workspace_key())
    path = write_spec(tmp_path, emulator, targets=1)

    class LosingLease:
        @contextmanager
        def acquire(self, key: str) -> Iterator[SimpleNamespace]:
            info = SimpleNamespace(key=key, lost=threading.Event())
            info.lost.set()
            yield info

    engine = Engine(load_rotation_file(path), base_dir=tmp_path, settings=FAST, lease=LosingLease())  # type: ignore[arg-type]
    result = engine.apply(["payments"])[0]
    assert (result.outcome, result.steps) == ("failed", [])
    assert "lost the lease" in result.message
    assert agent_keys(emulator) == []


def test_write_between_decision_and_stage_is_a_conflict(
    tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer changes a target after the pass observed it: the stage fails as a conflict
    instead of overwriting, the old key keeps serving, and the next pass converges."""
    monkeypatch.setenv(ADMIN_ENV, emulator.emulator.bootstrap_workspace_key())
    path = write_spec(tmp_path, emulator, drain="0s", propagation="0s", targets=2)
    engine = Engine(load_rotation_file(path), base_dir=tmp_path, settings=FAST)
    engine.apply(["payments"])
    old = read_dotenv_key(tmp_path / "secrets/a.env")
    target = tmp_path / "secrets/b.json"

    def meddle(key: str, decision: Decision) -> None:
        if decision.action == "stage":  # an operator adds a field to b.json at this instant
            target.write_text(target.read_text().replace("{", '{"region": "eu", ', 1))

    failed = engine.apply(["payments"], force=True, progress=meddle)[0]
    assert failed.outcome == "failed" and "b.json" in failed.message
    assert old is not None and emulator.emulator.key_accepted(old)
    done = engine.apply(["payments"], wait=True)[0]
    assert done.outcome == "ok", done.message
    assert '"region": "eu"' in target.read_text()  # the other writer's change survived
    assert read_dotenv_key(tmp_path / "secrets/a.env") != old
