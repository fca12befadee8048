"""A reset vendor's `bootstrap` key: a wrong one is named as such, never taken for a lost reset."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from rotator.sandbox.emulator import EmulatorServer
from tests.conftest import run_cli
from tests.e2e_helpers import adjutor_app_yaml, write_rotation_file

FAST_ENV = {"ROTATOR_RETRY_INITIAL": "0.01", "ROTATOR_PROBE_TIMEOUT": "2"}
BOOT_ENV = "E2E_LENDSQR_KEY"


def _spec(tmp_path: Path, emulator: EmulatorServer, app_id: str) -> None:
    text = adjutor_app_yaml(
        emulator.url, app_id, ["{type: file, path: secrets/app.key}"], bootstrap=f"{{env: {BOOT_ENV}}}"
    )
    (tmp_path / "secrets").mkdir()
    write_rotation_file(tmp_path, text)


def _resets(emulator: EmulatorServer) -> list[object]:
    return [r for r in emulator.emulator.request_log() if r[1].endswith("/key/reset")]


@pytest.mark.parametrize(
    ("which", "status"), [("another app's key", "403"), ("an unknown key", "401: unknown or revoked")]
)
def test_wrong_adjutor_bootstrap_key_is_named_not_a_reset(
    tmp_path: Path, emulator: EmulatorServer, which: str, status: str
) -> None:
    """`bootstrap` holding a key that is not the app's: exit 1 with one line saying so and what
    the vendor answered, no advice to reset, and nothing changed at the vendor or in the target."""
    mine = emulator.emulator.create_app("app_1")
    other = emulator.emulator.create_app("app_2")
    wrong = other if which == "another app's key" else "sk_live_" + "Q" * 40
    _spec(tmp_path, emulator, "app_1")
    proc = run_cli("apply", cwd=tmp_path, env={**FAST_ENV, BOOT_ENV: wrong})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    assert lines[0] == (
        f"app: failed (failed): the bootstrap key is not a key of app app_1 (the vendor answered "
        f"{status}); set ${BOOT_ENV} to app app_1's current key and run `rotator apply` again"
    )
    output = proc.stdout + proc.stderr
    assert "reset" not in output and "console" not in output and "Traceback" not in output
    assert mine not in output and wrong not in output
    assert _resets(emulator) == []
    assert emulator.emulator.key_accepted(mine) and emulator.emulator.key_accepted(other)
    assert not (tmp_path / "secrets/app.key").exists()
    debug_env = {**FAST_ENV, BOOT_ENV: wrong, "ROTATOR_LOG_LEVEL": "DEBUG"}
    plan = run_cli("--debug", "plan", cwd=tmp_path, env=debug_env)
    assert plan.returncode == 1 and "is not a key of app app_1" in plan.stdout, plan.stdout
    written = [p.read_text(errors="replace") for p in (tmp_path / "state").rglob("*") if p.is_file()]
    for text in [plan.stdout + plan.stderr, *written]:
        assert mine not in text and wrong not in text


def test_revoked_bootstrap_after_a_lost_reset_keeps_the_reset_diagnosis(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    """A bootstrap key that was the app's key once (adopted, then reset away by a reset whose
    value was lost) still gets the lost-reset recovery steps, whether or not a target holds it."""
    raw = emulator.emulator.create_app("app_3")
    _spec(tmp_path, emulator, "app_3")
    env = {**FAST_ENV, BOOT_ENV: raw}
    adopt = run_cli("apply", cwd=tmp_path, env=env)
    assert adopt.returncode == 0, adopt.stdout + adopt.stderr
    assert (tmp_path / "secrets/app.key").read_text().strip() == raw
    crashed = run_cli("rotate", "app", cwd=tmp_path, env={**env, "ROTATOR_CRASH_AT": "after-reset"})
    assert crashed.returncode == -signal.SIGKILL
    assert not emulator.emulator.key_accepted(raw)
    for _ in ("target holds it", "target emptied"):
        proc = run_cli("apply", cwd=tmp_path, env=env)
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert "a reset happened and its new value never reached a store" in proc.stdout
        (tmp_path / "secrets/app.key").unlink(missing_ok=True)
    assert len(_resets(emulator)) == 1
