"""The chaos harness in the suite: a short run under every kind of fault, and the checks that
judge it, each shown able to fail."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from rotator.sandbox.emulator import EmulatorServer
from tests.chaos import invariants
from tests.chaos.harness import ChaosConfig, run_chaos
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
