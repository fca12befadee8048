"""End to end over real HTTP: the emulator, file targets, the engine and the CLI."""

from __future__ import annotations

import re
import time
from pathlib import Path

from rotator.engine.runner import Engine
from rotator.sandbox.demo import Consumer
from rotator.sandbox.emulator import EmulatorServer
from rotator.sandbox.readonce import read_stats
from rotator.spec import Settings, load_rotation_file
from tests.conftest import run_cli
from tests.e2e_helpers import (
    ADMIN_ENV,
    VENDOR_CLOCK_SLACK_S,
    adjutor_app,
    agent_keys,
    journal,
    read_dotenv_key,
    read_json_key,
    write_spec,
)

FAST = Settings(retry_initial=0.01, probe_timeout=5)


def _engine(path: Path) -> Engine:
    return Engine(load_rotation_file(path), base_dir=path.parent, settings=FAST)


def test_overlap_rotation_with_live_consumer(tmp_path: Path, emulator: EmulatorServer, admin: str) -> None:
    """A full overlap rotation while a consumer keeps calling: it never sees a 401."""
    engine = _engine(write_spec(tmp_path, emulator))
    first = engine.apply(["payments"])[0]
    assert (first.outcome, first.steps) == ("ok", ["mint", "stage", "promote"])
    old = read_dotenv_key(tmp_path / "secrets/a.env")
    assert old is not None and read_json_key(tmp_path / "secrets/b.json") == old

    consumer = Consumer(tmp_path / "secrets/a.env", emulator.url, interval=0.05)
    consumer.start()
    time.sleep(0.5)
    result = engine.apply(["payments"], force=True, wait=True)[0]
    time.sleep(1.1)
    consumer.stop()

    new = read_dotenv_key(tmp_path / "secrets/a.env")
    assert result.outcome == "ok", result.message
    assert result.steps == ["mint", "stage", "promote", "revoke"]
    assert new is not None and new != old and read_json_key(tmp_path / "secrets/b.json") == new
    assert emulator.emulator.key_accepted(new) and not emulator.emulator.key_accepted(old)
    assert consumer.requests > 20
    assert consumer.auth_failures == 0
    assert len(consumer.prefixes_seen) == 2
    events = [e["event"] for e in journal(tmp_path)]
    assert events[-4:] == ["minted", "staged", "staged", "promoted"] or "revoked" in events
    promoted = [e for e in journal(tmp_path) if e["event"] == "promoted"][-1]
    revoked = [e for e in journal(tmp_path) if e["event"] == "revoked"][-1]
    gap = _ts(revoked["ts"]) - _ts(promoted["details"]["promoted_at"])
    assert gap >= 2.0  # propagation 1s + drain 1s, never earlier


def _ts(text: str) -> float:
    from rotator.abc import parse_time

    return parse_time(text).timestamp()


def test_current_key_left_alone(tmp_path: Path, emulator: EmulatorServer, admin: str) -> None:
    """A key that is current and young: apply takes no step and mints nothing."""
    path = write_spec(tmp_path, emulator)
    assert _engine(path).apply(["payments"])[0].outcome == "ok"
    before = agent_keys(emulator)
    proc = run_cli("apply", cwd=tmp_path, env={ADMIN_ENV: admin})
    assert proc.returncode == 0, proc.stderr
    assert "payments: ok (current)" in proc.stdout
    assert agent_keys(emulator) == before


def test_cutover_rotation_on_reset_vendor(tmp_path: Path, emulator: EmulatorServer) -> None:
    """On the reset vendor, the stored key is reset and the new one lands in every target."""
    raw, spec = adjutor_app(tmp_path, emulator)
    engine = _engine(spec)
    adopt = engine.apply(["app"])[0]
    assert (adopt.outcome, adopt.steps) == ("ok", ["stage"])
    result = engine.apply(["app"], force=True)[0]
    assert result.outcome == "ok", result.message
    assert result.steps == ["reset"]
    new = (tmp_path / "secrets/app.key").read_text().strip()
    assert new != raw
    assert f"ADJUTOR_KEY={new}" in (tmp_path / "secrets/app.env").read_text()
    assert emulator.emulator.key_accepted(new) and not emulator.emulator.key_accepted(raw)
    reset = [e for e in journal(tmp_path) if e["event"] == "reset"][-1]
    assert reset["details"]["window_s"] >= reset["details"]["first_write_s"] >= 0
    assert [e["event"] for e in journal(tmp_path)][-1] == "verified"


def test_held_exit_code_and_status(tmp_path: Path, emulator: EmulatorServer, admin: str) -> None:
    """A consumer on the old key past the timeout: exit 3, old key still active."""
    path = write_spec(tmp_path, emulator, drain="1s", propagation="0s", timeout="2s", targets=1)
    engine = _engine(path)
    engine.apply(["payments"])
    old = read_dotenv_key(tmp_path / "secrets/a.env")
    engine.apply(["payments"], force=True)
    assert old is not None
    stubborn = Consumer(tmp_path / "secrets/a.env", emulator.url, interval=0.05)
    stubborn._read_key = lambda: old  # type: ignore[method-assign]
    stubborn.start()
    try:
        proc = run_cli("apply", "--wait", cwd=tmp_path, env={ADMIN_ENV: admin})
        # while the consumer still uses the old key (once it stops, the key drains and may go);
        # a fresh process's view of the timeout may trail by the vendor clock's slack
        time.sleep(VENDOR_CLOCK_SLACK_S + 0.1)
        status = run_cli("status", "--output", "json", cwd=tmp_path, env={ADMIN_ENV: admin})
    finally:
        stubborn.stop()
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "held" in proc.stdout and "still used" in proc.stdout
    assert emulator.emulator.key_accepted(old)
    assert status.returncode == 0
    assert '"phase": "held"' in status.stdout


def test_validate_and_plan_exit_codes(tmp_path: Path, emulator: EmulatorServer, admin: str) -> None:
    """validate: 0 / 2; plan --detailed-exitcode: 2 while a step is pending, 0 at rest."""
    path = write_spec(tmp_path, emulator)
    env = {ADMIN_ENV: admin}
    assert run_cli("validate", cwd=tmp_path, env=env).returncode == 0
    pending = run_cli("plan", "--detailed-exitcode", cwd=tmp_path, env=env)
    assert pending.returncode == 2 and "payments: due -> mint" in pending.stdout
    assert agent_keys(emulator) == []  # plan never writes
    _engine(path).apply(["payments"])
    assert run_cli("plan", "--detailed-exitcode", cwd=tmp_path, env=env).returncode == 0
    path.write_text(path.read_text().replace("drain: 1s", "drain: soon"))
    bad = run_cli("validate", cwd=tmp_path, env=env)
    assert bad.returncode == 2
    assert "defaults.verify.drain" in bad.stderr and "Traceback" not in bad.stderr


def test_sandbox_command(tmp_path: Path) -> None:
    """`rotator sandbox` runs the loop: a service that reads its key once is started by its
    consumer, restarted on the new key by the rotation's roll, and no call of any of its
    generations is refused; the demo leaves no process running."""
    proc = run_cli("sandbox", "--drain", "1s", "--keep", str(tmp_path / "demo"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "consumer auth failures  0" in proc.stdout
    assert "(revoked)" in proc.stdout
    for step in ("mint", "promote", "roll", "drain", "revoke", "at rest"):
        assert re.search(rf"^ +\d+\.\d\ds  {step} ", proc.stdout, re.M), step
    new_key = read_dotenv_key(tmp_path / "demo/secrets/demo.env")
    assert new_key is not None and new_key not in proc.stdout + proc.stderr
    totals = read_stats(tmp_path / "demo/service-stats")
    assert [g.prefix for g in totals.generations][-1] == new_key[:13]
    assert len(totals.generations) == 2 and totals.running == []
    assert totals.auth_failures == 0 and totals.other_failures == 0 and totals.accepted >= 6
    assert f"service generations 2 ({totals.generations[0].prefix}…, {new_key[:13]}…)" in proc.stdout
    assert f"consumer requests   {totals.requests}, over every generation" in proc.stdout
    [rolled] = [e for e in journal(tmp_path / "demo") if e["event"] == "rolled"][1:]
    assert f"roll (restart)      {rolled['details']['seconds']:6.2f}s" in proc.stdout
