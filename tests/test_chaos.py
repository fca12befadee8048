"""The chaos harness in the suite: a short run under every kind of fault, and the checks that
judge it, each shown able to fail."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from rotator.sandbox.emulator import EmulatorServer
from tests.chaos import invariants
from tests.chaos.consumers import ReadOnceService
from tests.chaos.harness import ChaosConfig, held_leases, run_chaos
from tests.chaos.proxy import FaultProxy

SHORT_ROTATIONS = ChaosConfig().rotations


@pytest.mark.slow
@pytest.mark.openbao
@pytest.mark.timeout(240)
def test_short_chaos_run_keeps_every_invariant(tmp_path: Path) -> None:
    """Six keys rotate under kills, crash hooks, vendor and store faults and an OpenBao restart: all zeros."""
    report = run_chaos(
        ChaosConfig(
            rotations=SHORT_ROTATIONS,
            workdir=tmp_path / "chaos",
            log=lambda line: print(line, file=sys.stderr),
        )
    )
    print(report.table())
    assert not report.failures, report.table() + "\n" + "\n".join(report.failures)
    values = {what: value for what, value, _ in report.rows}
    assert report.rotations >= SHORT_ROTATIONS
    for zero in (
        "consumer auth failures (401)",
        "keys lost (target holds a rejected key)",
        "orphan keys left active",
        "double mints",
        "raw keys in outputs or state_dir",
        "revokes before propagation + drain",
    ):
        assert values[zero] == "0", zero
    assert int(values["consumer requests"]) > 100
    assert values["OpenBao restarts (data kept)"] == "1"


# --------------------------------------------------------------------------- the checks


def _entry(ts: str, event: str, key: str = "k", **details: Any) -> dict[str, Any]:
    return {"ts": f"2026-11-01T00:00:{ts}Z", "event": event, "key": key, "details": details}


JOURNAL = [
    _entry("00", "minted", key_id="key_2"),
    _entry("01", "promoted", key_id="key_2", promoted_at="2026-11-01T00:00:01Z"),
    _entry("05", "revoked", key_id="key_1"),
    _entry("06", "minted", key_id="key_3"),
    _entry("07", "promoted", key_id="key_3", promoted_at="2026-11-01T00:00:07Z"),
    _entry("08", "revoked", key_id="key_2"),
]


def test_rotation_times_and_early_revokes() -> None:
    """Mint-to-revoke times come from the journal; a revoke inside propagation + drain is flagged."""
    assert invariants.rotations(JOURNAL) == [5.0, 2.0]
    assert invariants.completed(JOURNAL) == 2
    assert invariants.early_revokes(JOURNAL, timedelta(seconds=3)) == [
        "k: key_2 revoked 1.00s after promotion"
    ]
    assert invariants.early_revokes(JOURNAL, timedelta(seconds=1)) == []


def _vendor_key(n: int, created: str, revoked: str | None = None, *, ours: bool = True) -> dict[str, Any]:
    name = f"rotator:k:attempt-{n}" if ours else "made by hand"
    return {
        "id": f"key_{n}",
        "name": name,
        "agent_id": "a",
        "created_at": f"2026-11-01T00:00:{created}Z",
        "revoked_at": f"2026-11-01T00:00:{revoked}Z" if revoked else None,
    }


def test_double_mints_are_found_and_sequential_mints_are_not() -> None:
    """A second key minted before the first was promoted or revoked is a double mint; after, it is not."""
    sequential = [_vendor_key(1, "00", "05", ours=False), _vendor_key(2, "00", "08"), _vendor_key(3, "06")]
    journal = [e for e in JOURNAL if e["event"] != "minted"]
    assert invariants.double_mints(sequential, journal, {"k": "a"}) == []
    racing = [_vendor_key(1, "00", "05", ours=False), _vendor_key(2, "02"), _vendor_key(3, "03")]
    assert invariants.double_mints(racing, [], {"k": "a"}) == ["k: key_3 minted while key_2 was unresolved"]


def test_leak_scan_finds_raw_keys_not_redacted_ones(tmp_path: Path) -> None:
    """A full raw key or a known value in a file is a leak; a redacted prefix is not."""
    raw = "adj_agent_" + "ab" * 24
    (tmp_path / "clean.log").write_text("adj_agent_ab…[redacted] key_1 (adj_agent_aba…)\n")
    (tmp_path / "leak.log").write_text(f"token={raw}\n")
    (tmp_path / "other.log").write_text("value=opaque-secret-value\n")
    files = sorted(tmp_path.iterdir())
    assert invariants.leaks(files, {raw}) == [str(tmp_path / "leak.log")]
    assert invariants.leaks(files, {"opaque-secret-value"}) == [
        str(tmp_path / "leak.log"),
        str(tmp_path / "other.log"),
    ]


def test_fault_proxy_resets_and_recovers(emulator: EmulatorServer) -> None:
    """With every connection dropped nothing gets through; quiet, the same proxy forwards again."""
    host, port = emulator.url.removeprefix("http://").split(":")
    with FaultProxy((host, int(port)), drop_rate=1.0, seed=1) as proxy:
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{proxy.url}/health", timeout=2)
        assert proxy.stats["dropped"] == 1
        proxy.quiet()
        answer = httpx.get(f"{proxy.url}/health", timeout=2)
        assert answer.status_code == 401  # the vendor answered: no key was sent
        proxy.reset_rate = 2.0  # every chunk, either way
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{proxy.url}/health", timeout=2)
        assert proxy.stats["reset-request"] + proxy.stats["reset-answer"] >= 1


def _roll_journal() -> list[dict[str, Any]]:
    def entry(ts: str, event: str, attempt: str, **details: Any) -> dict[str, Any]:
        return {**_entry(ts, event, **details), "attempt": attempt}

    return [
        entry("01", "promoted", "a1", fingerprint="fp1"),
        entry("02", "rolled", "a1", consumer="command"),
        entry("10", "promoted", "a2", fingerprint="fp2"),
        entry("12", "rolled", "a2", consumer="command"),
        entry("20", "promoted", "a3", fingerprint="fp3"),
    ]


def _at(s: str) -> datetime:
    return datetime.fromisoformat(f"2026-11-01T00:00:{s}+00:00")


def test_restarts_per_attempt_exactly_one_unless_a_pass_died_during_the_roll() -> None:
    """One restart per rolled attempt is right; a second is allowed only when a pass holding the
    key (or an unknown one) died during that roll; a third never; an attempt never rolled fails."""
    gens = {"k": [("fp1", _at("01")), ("fp2", _at("10")), ("fp2", _at("11")), ("fp3", _at("20"))]}
    found = {a.attempt: a for a in invariants.restarts(_roll_journal(), gens, [])}
    assert [(a.restarts, a.rolled, a.hit, a.ok) for a in found.values()] == [
        (1, True, False, True),
        (2, True, False, False),  # twice, and nothing explains it
        (1, False, False, False),  # promoted, never rolled
    ]
    other_key = [(_at("11"), frozenset({"other"}))]
    assert not {a.attempt: a for a in invariants.restarts(_roll_journal(), gens, other_key)}["a2"].ok
    for held in (frozenset({"k"}), None):
        a2 = {a.attempt: a for a in invariants.restarts(_roll_journal(), gens, [(_at("11"), held)])}["a2"]
        assert a2.hit and a2.ok
    thrice = {"k": [*gens["k"], ("fp2", _at("11"))]}
    a2 = {a.attempt: a for a in invariants.restarts(_roll_journal(), thrice, [(_at("11"), None)])}["a2"]
    assert a2.hit and not a2.ok


def test_held_leases_names_the_keys_a_process_holds(tmp_path: Path) -> None:
    """``/proc/locks`` shows the flock of a live process on a key's lease file: its key only."""
    locks = tmp_path / "locks"
    locks.mkdir()
    for key in ("k00", "k01"):
        (locks / f"{key}.lock").touch()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(locks / "k01.lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert held_leases(holder.pid, locks) == frozenset({"k01"})
        assert held_leases(os.getpid(), locks) == frozenset()
    finally:
        holder.kill()
        holder.wait()


HOLD = "import fcntl, sys, time\nf = open(sys.argv[1])\nfcntl.flock(f, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(60)\n"


@pytest.mark.slow
def test_two_restarts_at_once_leave_one_live_generation(emulator: EmulatorServer, tmp_path: Path) -> None:
    """What the chaos run can meet: a pass SIGKILLed during a roll leaves its ``command``
    consumer's restart running (it is in a session of its own), and the next pass rolls the
    same attempt again at once. Two overlapping restarts must still end with one generation
    serving (restarts take turns); without that, both new ones stayed alive, and the one left
    over kept its key when the next rotation restarted the other."""
    key = emulator.emulator.bootstrap_workspace_key("race")
    env_file = tmp_path / "service.env"
    env_file.write_text(f"ADJUDON_API_KEY={key}\n")
    service = ReadOnceService("race", env_file, "ADJUDON_API_KEY", emulator.url, tmp_path / "svc", 0.1)
    try:
        subprocess.run(service.restart_argv(), check=True, capture_output=True, timeout=60)
        first = subprocess.Popen(service.restart_argv(), stdout=subprocess.DEVNULL)
        second = subprocess.Popen(service.restart_argv(), stdout=subprocess.DEVNULL)
        assert first.wait(timeout=60) == 0 and second.wait(timeout=60) == 0
        assert len(service.totals().running) == 1, [g.pid for g in service.totals().running]
    finally:
        service.stop()
