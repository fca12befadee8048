"""`rotator report`: the compliance report from the journal and the vendor's key list, as a table,
JSON, CSV and a self-contained HTML page that headless Chromium renders with every key."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from rotator.sandbox.emulator import EmulatorServer
from tests.conftest import run_cli
from tests.e2e_helpers import ADMIN_ENV, VENDOR_CLOCK_SLACK_S, journal, read_dotenv_key, write_spec

FAST_ENV = {"ROTATOR_RETRY_INITIAL": "0.01", "ROTATOR_PROBE_TIMEOUT": "5"}
BILLING = """\
  billing:
    issuer: emu
    kind: agent
    agent_id: billing
    max_age: 1s
    targets:
      - {type: file, path: secrets/billing.env, format: dotenv, field: ADJUDON_API_KEY}
"""


@pytest.fixture
def rotated(tmp_path: Path, emulator: EmulatorServer) -> dict[str, Any]:
    """payments rotated once (and its old key revoked), then an emergency on it; billing minted
    and left past its max_age of 1s."""
    admin = emulator.emulator.bootstrap_workspace_key()
    env = {ADMIN_ENV: admin, **FAST_ENV}
    write_spec(tmp_path, emulator, drain="0s", propagation="0s", extra=BILLING)
    assert run_cli("apply", cwd=tmp_path, env=env).returncode == 0
    first = read_dotenv_key(tmp_path / "secrets/a.env")
    proc = run_cli("rotate", "payments", "--wait", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    second = read_dotenv_key(tmp_path / "secrets/a.env")
    proc = run_cli("emergency", "payments", "--reason", "drill", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    time.sleep(1.1 + VENDOR_CLOCK_SLACK_S)  # billing is now older than its max_age, in either clock
    raw = [admin, first, second, read_dotenv_key(tmp_path / "secrets/a.env")]
    raw.append(read_dotenv_key(tmp_path / "secrets/billing.env"))
    assert all(raw)
    return {"env": env, "raw": raw, "dir": tmp_path}


def _report(rotated: dict[str, Any], *args: str) -> str:
    proc = run_cli("report", *args, cwd=rotated["dir"], env=rotated["env"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for value in rotated["raw"]:
        assert value not in proc.stdout + proc.stderr
    return proc.stdout


def test_json_report_proves_each_rotation_from_the_journal(rotated: dict[str, Any]) -> None:
    """Per key: issuer, age against max_age, last rotation and emergency, and for each rotation
    the journal entries (line and hash) that prove it."""
    data = json.loads(_report(rotated, "--output", "json"))
    assert data["journal_intact"] is True and data["journal_entries"] == len(journal(rotated["dir"]))
    keys = {k["key"]: k for k in data["keys"]}
    assert set(keys) == {"payments", "billing"}
    pay, bill = keys["payments"], keys["billing"]
    assert (pay["issuer"], pay["issuer_type"], pay["phase"]) == ("emu", "adjudon", "current")
    assert pay["compliant"] is True and pay["age_s"] < pay["max_age_s"] == 30 * 86400
    assert bill["compliant"] is False and bill["age_s"] > bill["max_age_s"] == 1
    assert bill["last_emergency"] is None and pay["last_emergency"] is not None
    assert pay["last_emergency_outcome"] == "ok"

    entries = {e["seq"]: e for e in journal(rotated["dir"])}
    promoted = [e["attempt"] for e in entries.values() if e["key"] == "payments" and e["event"] == "promoted"]
    assert [r["attempt"] for r in pay["rotations"]] == promoted and len(promoted) == 3
    for rotation in pay["rotations"]:
        for mark in rotation["entries"]:
            line = entries[mark["seq"]]
            assert (line["hash"], line["event"], line["ts"]) == (mark["hash"], mark["event"], mark["ts"])
    # the forced rotation: promoted, then its old key revoked once drained
    assert [m["event"] for m in pay["rotations"][1]["entries"]] == ["promoted", "revoked"]
    assert pay["rotations"][1]["completed_at"] is not None
    assert pay["last_rotation"] == pay["rotations"][-1]["current_since"]


def test_table_and_csv(rotated: dict[str, Any]) -> None:
    """The table shows one row per key and the proof lines; the CSV is one row per key."""
    table = _report(rotated)
    assert table.startswith("journal intact: ")
    rows = {line.split()[0]: line for line in table.splitlines() if line.startswith(("payments", "billing"))}
    assert set(rows) == {"payments", "billing"}
    assert " NO " in rows["billing"] and " yes " in rows["payments"]
    assert len(re.findall(r"^  attempt [0-9a-f-]{36}: promoted #\d+ [0-9a-f]{12}", table, re.M)) == 4

    parsed = list(csv.DictReader(io.StringIO(_report(rotated, "--output", "csv"))))
    assert [r["key"] for r in parsed] == ["payments", "billing"]
    assert parsed[1]["compliant"] == "NO" and parsed[0]["rotations"] == "3"
    assert "promoted #" in parsed[0]["journal_entries"]


def test_report_of_one_key_and_to_a_file(rotated: dict[str, Any]) -> None:
    """KEY limits the report; --out writes it to a file; an unknown key is one error line."""
    out = rotated["dir"] / "r.json"
    assert "report written to" in _report(rotated, "billing", "--output", "json", "--out", str(out))
    assert [k["key"] for k in json.loads(out.read_text())["keys"]] == ["billing"]
    bad = run_cli("report", "ghost", cwd=rotated["dir"], env=rotated["env"])
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unknown key(s): ghost" in bad.stderr


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is missing under CI: `make test` installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (`apt-get install chromium`); CI installs it")
    return found


def test_html_report_renders_every_key_in_headless_chromium(rotated: dict[str, Any], tmp_path: Path) -> None:
    """The HTML page is self-contained (no URL it could fetch); Chromium renders it and its DOM
    shows every key, a chart bar per key and the journal proof."""
    chromium = _chromium()
    page = rotated["dir"] / "report.html"
    _report(rotated, "--output", "html", "--out", str(page))
    text = page.read_text()
    assert not re.search(r"""(src|href)\s*=|url\(|@import|https?://(?!www\.w3\.org/2000/svg)""", text)
    home = tmp_path / "chromium-home"  # its profile and crash files stay in the test's tmp
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    common = [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={home}"]
    shot = rotated["dir"] / "report.png"
    subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1200,800", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert shot.exists(), "chromium wrote no screenshot"
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000  # a blank 1200x800 page is ~5 KB
    dom = subprocess.run(
        [*common, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    ).stdout
    for key in ("payments", "billing"):
        assert f'<tr data-key="{key}">' in dom
        assert re.search(rf"<rect [^>]*><title>{key}: ", dom)
    assert dom.count('class="bad">NO<') == 1 and "audit journal" in dom
