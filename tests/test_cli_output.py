"""What a terminal user and a script see: exit codes, one error format, JSON output,
read-only commands that write nothing, the journal's head record and the daemon's health.

Each test drives the real command line (in this process, or in a subprocess where a pipe
matters) against the vendor emulator over loopback HTTP and file targets.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rotator.audit import Journal
from rotator.sandbox.emulator import EmulatorServer
from rotator.scheduler import Daemon, serve_http
from rotator.spec import Settings
from tests import test_bad_input
from tests.chaos.invariants import RAW_KEY
from tests.conftest import run_cli
from tests.e2e_helpers import ADMIN_ENV, journal, write_spec
from tests.test_bad_input import BASE, assert_one_clear_error

cli = test_bad_input.cli  # the bad-input corpus's fixture: the real CLI in this process

FAST_ENV = {"ROTATOR_RETRY_INITIAL": "0.01", "ROTATOR_PROBE_TIMEOUT": "5"}
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture
def admin(emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> str:
    key = emulator.emulator.bootstrap_workspace_key()
    monkeypatch.setenv(ADMIN_ENV, key)
    for name, value in FAST_ENV.items():
        monkeypatch.setenv(name, value)
    return key


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _no_secret(*texts: str) -> None:
    for text in texts:
        assert not RAW_KEY.search(text.encode()), text


def _hold(tmp_path: Path, emulator: EmulatorServer, cli: Any) -> Path:
    """A key held: a newer active key, minted by hand, sits beside the one the rotator holds."""
    path = write_spec(tmp_path, emulator, targets=1)
    assert cli("-f", str(path), "apply").code == 0
    emulator.emulator.create_agent_key("payments", name="by hand")
    return path


# --------------------------------------------------------------------------- settings (2)


def test_invalid_setting_is_one_line_exit_2(
    tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad ROTATOR_* variable: one line naming it, exit 2, no traceback, nothing written."""
    path = tmp_path / "rotations.yaml"
    path.write_text(BASE)
    monkeypatch.setenv("ROTATOR_LOG_LEVEL", "chatty")
    result = cli("-f", str(path), "validate")
    assert_one_clear_error(result, "ROTATOR_LOG_LEVEL", "'chatty'", code=2)
    assert result.err_lines[0].startswith("rotator: error: invalid setting ROTATOR_LOG_LEVEL: ")
    monkeypatch.setenv("ROTATOR_LOG_LEVEL", "debug")  # lowercase is simply accepted
    monkeypatch.setenv("ROTATOR_PARALLEL", "lots")
    result = cli("-f", str(path), "apply")
    assert_one_clear_error(result, "ROTATOR_PARALLEL", code=2)
    monkeypatch.setenv("ROTATOR_DEBUG", "perhaps")  # even --debug's own variable: one line
    assert cli("-f", str(path), "validate").err_lines[0].startswith("rotator: error: invalid setting")
    assert _tree(tmp_path) == ["rotations.yaml"]


def test_lowercase_log_level_is_accepted(tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """ROTATOR_LOG_LEVEL=debug means DEBUG."""
    path = tmp_path / "rotations.yaml"
    path.write_text(BASE)
    monkeypatch.setenv("ROTATOR_LOG_LEVEL", "debug")
    result = cli("-f", str(path), "validate")
    assert result.code == 0, result.err
    assert Settings().log_level == "DEBUG"


# --------------------------------------------------------------------------- journal head (9)


def _rotated_journal(tmp_path: Path, emulator: EmulatorServer, cli: Any) -> Path:
    path = write_spec(tmp_path, emulator)
    assert cli("-f", str(path), "apply").code == 0
    return path


def test_truncated_journal_fails_verify(
    tmp_path: Path, emulator: EmulatorServer, admin: str, cli: Any
) -> None:
    """Lines cut from the end, or the whole journal deleted: audit verify exits 1 naming it."""
    path = _rotated_journal(tmp_path, emulator, cli)
    log = tmp_path / "state/audit.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    assert len(lines) >= 3
    ok = cli("-f", str(path), "audit", "verify")
    assert ok.code == 0 and f"journal intact: {len(lines)} entries" in ok.out

    log.write_bytes(b"".join(lines[:-1]))  # the tail cut at a line boundary: a valid chain
    cut = cli("-f", str(path), "audit", "verify")
    assert_one_clear_error(cut, "cut from the end", f"counts {len(lines)}", code=1)

    log.unlink()
    gone = cli("-f", str(path), "audit", "verify")
    assert_one_clear_error(gone, "the journal is missing", code=1)


def test_truncated_journal_refuses_appends(
    tmp_path: Path, emulator: EmulatorServer, admin: str, cli: Any
) -> None:
    """A pass does not write over a cut: appending to a journal shorter than its head fails."""
    _rotated_journal(tmp_path, emulator, cli)
    log = tmp_path / "state/audit.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:-1]))
    with pytest.raises(Exception, match="was cut"):
        Journal(tmp_path / "state").append("note", key="payments")
    assert log.read_bytes() == b"".join(lines[:-1])


def test_replaced_tail_fails_verify(tmp_path: Path) -> None:
    """A journal cut and re-chained to the same length: the head's hash no longer matches."""
    state = tmp_path / "state"
    first = Journal(state)
    for n in range(3):
        first.append("note", key="payments", n=n)
    head = first.read_head()
    log = state / "audit.jsonl"
    log.write_bytes(b"".join(log.read_bytes().splitlines(keepends=True)[:2]))
    (state / "audit.head").rename(state / "kept.head")
    Journal(state).append("note", key="payments", n=99)  # a forged third entry
    (state / "kept.head").rename(state / "audit.head")
    result = Journal(state).verify()
    assert head is not None and not result.ok and result.first_bad == 3
    assert "head record" in (result.reason or "")


def test_head_lagging_one_entry_after_a_crash_is_accepted(tmp_path: Path) -> None:
    """A crash between the journal write and the head write leaves the head one behind: intact."""
    state = tmp_path / "state"
    journal_ = Journal(state)
    journal_.append("one")
    saved = (state / "audit.head").read_bytes()
    journal_.append("two")
    (state / "audit.head").write_bytes(saved)
    assert journal_.verify().ok
    journal_.append("three")  # the next append puts the head right again
    assert journal_.read_head() == (3, journal(tmp_path)[-1]["hash"])


# --------------------------------------------------------------------------- plan exit codes (14)


def test_plan_detailed_exitcode_invalid_file_is_1(tmp_path: Path, cli: Any) -> None:
    """With --detailed-exitcode an invalid file (or a usage error) is 1, never 2 (pending)."""
    path = tmp_path / "rotations.yaml"
    path.write_text(BASE.replace("drain: 1s", "drain: soon"))
    result = cli("-f", str(path), "plan", "--detailed-exitcode")
    assert_one_clear_error(result, "defaults.verify.drain", code=1)
    assert cli("-f", str(path), "plan").code == 2  # without it: validate's code
    usage = cli("-f", str(path), "plan", "--detailed-exitcode", "--colour")
    assert_one_clear_error(usage, "No such option", code=1)
    assert _tree(tmp_path) == ["rotations.yaml"]


def test_plan_detailed_exitcode(tmp_path: Path, emulator: EmulatorServer, admin: str, cli: Any) -> None:
    """0 nothing to do, 2 steps pending (Terraform's codes); plain plan is 0 either way."""
    path = write_spec(tmp_path, emulator)
    assert cli("-f", str(path), "plan").code == 0
    assert cli("-f", str(path), "plan", "--detailed-exitcode").code == 2
    assert cli("-f", str(path), "apply").code == 0
    assert cli("-f", str(path), "plan", "--detailed-exitcode").code == 0


# --------------------------------------------------------------------------- one error format (16)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["plan", "--colour"], "No such option '--colour'"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["status", "--output", "yaml"], "Invalid value for '--output'"),
        (["emergency", "payments"], "Missing option '--reason'"),
    ],
)
def test_usage_errors_use_one_format(tmp_path: Path, cli: Any, args: list[str], fragment: str) -> None:
    """click's usage errors: one `rotator: error:` line, click's exit code 2, nothing else."""
    path = tmp_path / "rotations.yaml"
    path.write_text(BASE)
    result = cli("-f", str(path), *args)
    assert_one_clear_error(result, fragment, "--help", code=2)
    assert "Usage:" not in result.err and "Error:" not in result.err.replace("rotator: error:", "")
    assert result.out == ""


def test_failed_key_is_reported_once(tmp_path: Path, emulator: EmulatorServer, admin: str, cli: Any) -> None:
    """A key held (or failed) in a pass is reported once, by its result line: no progress
    line and no log line repeat it on stderr."""
    path = _hold(tmp_path, emulator, cli)
    env = {ADMIN_ENV: os.environ[ADMIN_ENV], **FAST_ENV}
    proc = run_cli("-f", str(path), "apply", cwd=tmp_path, env=env)
    assert proc.returncode == 3 and proc.stdout.startswith("payments: held (held): "), proc.stderr
    reason = proc.stdout.strip().split(": ", 2)[-1]
    assert reason and (proc.stdout + proc.stderr).count(reason) == 1, (proc.stdout, proc.stderr)


def test_error_printed_once_with_debug(tmp_path: Path, cli: Any) -> None:
    """With --debug the traceback comes first, then the one error line, once."""
    result = cli("-f", str(tmp_path / "nope.yaml"), "--debug", "validate")
    assert result.code == 2
    assert result.err_lines[-1].startswith("rotator: error: ") and "Traceback" in result.err
    assert result.err.count("rotator: error:") == 1


# --------------------------------------------------------------------------- no wrapping (17)


def test_stderr_never_wraps_when_piped(tmp_path: Path, emulator: EmulatorServer, admin: str) -> None:
    """Piped (not a TTY), progress lines and errors stay whole however long they are."""
    long_name = "payments_" + "x" * 150
    path = write_spec(tmp_path, emulator, targets=1)
    path.write_text(path.read_text().replace("  payments:", f"  {long_name}:"))
    env = {ADMIN_ENV: os.environ[ADMIN_ENV], **FAST_ENV, "COLUMNS": "", "TERM": "dumb"}
    proc = run_cli("-f", str(path), "apply", "--wait", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    progress = [line for line in proc.stderr.splitlines() if long_name in line]
    assert progress and all(re.match(r"^\d\d:\d\d:\d\d ", line) for line in progress), proc.stderr
    assert len(progress[0]) > 160
    bad = run_cli("-f", str(path), "rotate", "nokey_" + "y" * 200, cwd=tmp_path, env=env)
    lines = bad.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rotator: error: unknown key(s): nokey_"), bad.stderr


# --------------------------------------------------------------------------- healthz (20)


@pytest.fixture
def daemon(tmp_path: Path, emulator: EmulatorServer) -> Iterator[tuple[Daemon, Path, str]]:
    path = write_spec(tmp_path, emulator)
    d = Daemon(path, settings=Settings(retry_initial=0.01))
    d.start(paused=True)
    server = serve_http(d, "127.0.0.1", 0)
    host, port = server.server_address[:2]
    try:
        yield d, path, f"http://{host!s}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        d.stop()


def _failures(base: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "rotator_config_reload_failures_total":
                return float(sample.value)
    raise AssertionError("no rotator_config_reload_failures_total")


def test_healthz_reports_stale_config(daemon: tuple[Daemon, Path, str]) -> None:
    """A refused reload: /healthz stays 200 but says config stale, with the error and the
    time of the last good load; the failure counter grows; a good reload clears it."""
    d, path, base = daemon
    health = httpx.get(f"{base}/healthz")
    assert health.status_code == 200 and health.json()["config"] == "ok"
    loaded = health.json()["config_loaded_at"]
    assert RFC3339_Z.match(loaded) and "config_error" not in health.json()
    assert _failures(base) == 0

    good = path.read_text()
    path.write_text(good.replace("drain: 1s", "drain: soon"))
    assert not d.reload()
    health = httpx.get(f"{base}/healthz")
    body = health.json()
    assert health.status_code == 200 and body["status"] == "ok"
    assert body["config"] == "stale" and body["config_loaded_at"] == loaded
    assert "defaults.verify.drain" in body["config_error"] and "\n" not in body["config_error"]
    assert _failures(base) == 1

    path.write_text(good)
    assert d.reload()
    body = httpx.get(f"{base}/healthz").json()
    assert body["config"] == "ok" and "config_error" not in body
    assert _failures(base) == 1
