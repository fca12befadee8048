"""`rotator emergency` refuses to guess: a repeat run, a future --leaked-since, an empty reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rotator.audit import Journal, JournalError
from rotator.emergency import keep_serving_ignored, run_emergency
from rotator.engine.runner import Engine
from rotator.sandbox.emulator import EmulatorServer
from rotator.spec import Settings, load_rotation_file
from tests.conftest import run_cli
from tests.e2e_helpers import (
    ADMIN_ENV,
    adjutor_app_yaml,
    agent_keys,
    journal,
    read_dotenv_key,
    write_rotation_file,
    write_spec,
)

FAST_ENV = {"ROTATOR_RETRY_INITIAL": "0.01", "ROTATOR_PROBE_TIMEOUT": "5"}
FAST = Settings(retry_initial=0.01, probe_timeout=5)


@pytest.fixture
def env(tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An agent key rotated once onto two file targets; the CLI's environment."""
    admin = emulator.emulator.bootstrap_workspace_key()
    monkeypatch.setenv(ADMIN_ENV, admin)
    path = write_spec(tmp_path, emulator, drain="10m", propagation="1m", timeout="1h")
    Engine(load_rotation_file(path), base_dir=tmp_path, settings=FAST).apply(["payments"])
    return {ADMIN_ENV: admin, **FAST_ENV}


def _reset_app(tmp_path: Path, emulator: EmulatorServer, app_id: str) -> str:
    """A rotation file with one Adjútor app key in ``app.key``; returns the app's raw key."""
    raw = emulator.emulator.create_app(app_id)
    (tmp_path / "app.key").write_text(raw + "\n")
    text = adjutor_app_yaml(emulator.url, app_id, ["{type: file, path: app.key}"])
    write_rotation_file(tmp_path, text, secrets=False)
    return raw


def _files(tmp_path: Path) -> dict[str, str]:
    """Every file a pass may write (targets, sidecars, the journal), name -> text."""
    return {
        str(p.relative_to(tmp_path)): p.read_text()
        for p in sorted(tmp_path.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def _started_at(tmp_path: Path) -> str:
    return [e for e in journal(tmp_path) if e["event"] == "emergency-started"][-1]["ts"]


def test_second_emergency_asks_which_key_leaked(
    tmp_path: Path, emulator: EmulatorServer, env: dict[str, str]
) -> None:
    """Right after an emergency, a second one without --key-id exits 2 naming the key the first
    minted and when, and changes nothing; with --key-id it revokes that key and mints again."""
    first = run_cli("emergency", "payments", "--reason", "leak", "--output", "json", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    minted = json.loads(first.stdout)
    raw = read_dotenv_key(tmp_path / "secrets/a.env")
    assert raw is not None and emulator.emulator.key_accepted(raw)
    keys, files = agent_keys(emulator), _files(tmp_path)

    again = run_cli("emergency", "payments", "--reason", "leak", cwd=tmp_path, env=env)
    assert again.returncode == 2, again.stdout + again.stderr
    lines = _error_lines(again.stderr)
    assert len(lines) == 1, again.stderr
    assert minted["new_key_id"] in lines[0] and minted["new_prefix"] in lines[0]
    assert _started_at(tmp_path) in lines[0] and "--key-id" in lines[0]
    assert raw not in again.stdout + again.stderr
    assert agent_keys(emulator) == keys and _files(tmp_path) == files  # nothing changed
    state = [text for name, text in files.items() if name.startswith("state")]
    assert state and not any(raw in text or env[ADMIN_ENV] in text for text in state)
    assert emulator.emulator.key_accepted(raw)

    named = run_cli(
        "emergency", "payments", "--reason", "leak", "--key-id", minted["new_key_id"], cwd=tmp_path, env=env
    )
    assert named.returncode == 0, named.stdout + named.stderr
    assert not emulator.emulator.key_accepted(raw)
    newest = read_dotenv_key(tmp_path / "secrets/a.env")
    assert newest is not None and newest != raw and emulator.emulator.key_accepted(newest)


def test_second_emergency_on_reset_vendor_asks_which_key_leaked(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    """The same on a reset vendor: a repeat would reset away the key the first reset gave."""
    _reset_app(tmp_path, emulator, "app_7")
    first = run_cli("emergency", "app", "--reason", "leak", cwd=tmp_path, env=FAST_ENV)
    assert first.returncode == 0, first.stdout + first.stderr
    current = (tmp_path / "app.key").read_text().strip()
    files = _files(tmp_path)

    # --keep-serving too: a refused run prints its one error line, not the option's warning
    again = run_cli("emergency", "app", "--reason", "leak", "--keep-serving", cwd=tmp_path, env=FAST_ENV)
    assert again.returncode == 2, again.stdout + again.stderr
    lines = _error_lines(again.stderr)
    assert len(lines) == 1 and f"app_7@{current[:12]}" in lines[0], again.stderr
    assert lines[0].startswith("rotator: error: ")
    assert _started_at(tmp_path) in lines[0]
    assert current not in again.stdout + again.stderr
    assert emulator.emulator.key_accepted(current) and _files(tmp_path) == files

    named = run_cli(
        "emergency",
        "app",
        "--reason",
        "leak",
        "--key-id",
        f"app_7@{current[:12]}",
        cwd=tmp_path,
        env=FAST_ENV,
    )
    assert named.returncode == 0, named.stdout + named.stderr
    assert not emulator.emulator.key_accepted(current)


def test_emergency_older_than_the_window_does_not_block(
    tmp_path: Path, emulator: EmulatorServer, env: dict[str, str]
) -> None:
    """An emergency more than an hour ago does not block the next one (fake clock 2 h ahead)."""
    first = run_cli("emergency", "payments", "--reason", "leak", "--output", "json", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    minted = json.loads(first.stdout)["new_key_id"]
    later = Engine(
        load_rotation_file(tmp_path / "rotations.yaml"),
        base_dir=tmp_path,
        settings=FAST,
        clock=lambda: datetime.now(UTC) + timedelta(hours=2),
    )
    with later:
        report = run_emergency(later, "payments", reason="leaked again")
    assert report.leaked_key_id == minted and report.outcome == "ok", report.message
    assert [k["status"] for k in agent_keys(emulator) if k["id"] == minted] == ["revoked"]


def test_emergency_future_leaked_since_is_refused(
    tmp_path: Path, emulator: EmulatorServer, env: dict[str, str]
) -> None:
    """A --leaked-since in the future: exit 2, one line naming the option, nothing changed."""
    keys, files = agent_keys(emulator), _files(tmp_path)
    future = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    proc = run_cli(
        "emergency", "payments", "--reason", "leak", "--leaked-since", future, cwd=tmp_path, env=env
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1 and "--leaked-since" in lines[0] and "future" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert agent_keys(emulator) == keys and _files(tmp_path) == files


@pytest.mark.parametrize("reason", ["", "   \t"])
def test_emergency_empty_reason_is_refused(
    tmp_path: Path, emulator: EmulatorServer, env: dict[str, str], reason: str
) -> None:
    """An empty or blank --reason: exit 2, one line naming the option, nothing changed."""
    keys, files = agent_keys(emulator), _files(tmp_path)
    proc = run_cli("emergency", "payments", "--reason", reason, cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1 and "--reason" in lines[0] and "empty" in lines[0], proc.stderr
    assert agent_keys(emulator) == keys and _files(tmp_path) == files


def test_keep_serving_on_reset_vendor_warns(tmp_path: Path, emulator: EmulatorServer) -> None:
    """--keep-serving on a reset vendor: one warning line saying why it cannot apply and that
    the emergency is an immediate reset; the reset still happens."""
    raw = _reset_app(tmp_path, emulator, "app_8")
    proc = run_cli("emergency", "app", "--reason", "leak", "--keep-serving", cwd=tmp_path, env=FAST_ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    warnings = [line for line in _error_lines(proc.stderr) if "warning" in line]
    assert len(warnings) == 1, proc.stderr
    assert warnings[0].startswith("rotator: warning: app: --keep-serving cannot apply")
    assert "immediate reset" in warnings[0]
    assert "(reset)" in proc.stdout
    assert not emulator.emulator.key_accepted(raw)


def test_keep_serving_on_overlap_vendor_does_not_warn(tmp_path: Path, env: dict[str, str]) -> None:
    """On an overlap vendor --keep-serving applies: no warning."""
    with Engine(load_rotation_file(tmp_path / "rotations.yaml"), base_dir=tmp_path, settings=FAST) as e:
        assert keep_serving_ignored(e, "payments") is None


def test_journal_recent_reads_the_tail_of_one_key(tmp_path: Path) -> None:
    """Journal.recent returns one key's entries since a time, oldest first."""
    j = Journal(tmp_path)
    j.append("minted", key="a", key_id="1")
    j.append("minted", key="b", key_id="2")
    j.append("promoted", key="a", key_id="1")
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    assert [e["event"] for e in j.recent("a", hour_ago)] == ["minted", "promoted"]
    assert j.recent("a", datetime.now(UTC) + timedelta(seconds=5)) == []
    assert Journal(tmp_path / "none").recent("a", hour_ago) == []
    # a line not in canonical order is still read; a line that is no entry is an error
    with j.path.open("a") as out:
        out.write(json.dumps({"ts": datetime.now(UTC).isoformat(), "key": "a", "event": "by-hand"}) + "\n")
    assert [e["event"] for e in j.recent("a", hour_ago)] == ["minted", "promoted", "by-hand"]
    with j.path.open("a") as out:
        out.write("not json\n")
    with pytest.raises(JournalError, match="not a journal entry"):
        j.recent("a", hour_ago)
