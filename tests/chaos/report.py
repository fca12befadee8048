"""The end of a chaos run: every invariant checked against the final state, in one table."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rotator.audit import Journal
from rotator.spec import parse_duration
from tests.chaos import invariants
from tests.chaos.world import World

if TYPE_CHECKING:
    from tests.chaos.harness import ChaosConfig, Driver


@dataclass
class ChaosReport:
    """The table's rows (what, value, ok or None for a count shown for information), the
    failed checks with their evidence, and where the run's files are."""

    rows: list[tuple[str, str, bool | None]]
    failures: list[str]
    rotations: int
    seconds: float
    workdir: Path

    def table(self) -> str:
        return invariants.table(self.rows)


def check(
    world: World, cfg: ChaosConfig, driver: Driver, final: tuple[int, int, bool, str], seconds: float
) -> ChaosReport:
    """Every invariant of DESIGN.md against the vendor's, the stores' and the journal's state."""
    emulator = world.emulator.emulator
    journal = Journal(world.state_dir)
    entries = [
        json.loads(line) for line in (world.state_dir / "audit.jsonl").read_text().splitlines() if line
    ]
    vendor = emulator.adjudon_keys()
    states = world.read_targets()
    scopes = {p.name: p.agent_id for p in world.plans}

    lost, orphans, disagree = [], [], []
    final_values: set[str] = set()
    for plan in world.plans:
        currents = {name: s.current for name, s in states[plan.name]}
        for name, current in currents.items():
            if current is None or not emulator.key_accepted(current.value.reveal()):
                lost.append(f"{plan.name}: {name}")
            else:
                final_values.add(current.value.reveal())
        if len({c.fingerprint if c else None for c in currents.values()}) != 1:
            disagree.append(plan.name)
        held = {c.value.prefix(13) for c in currents.values() if c is not None}
        for k in vendor:
            if k["agent_id"] == plan.agent_id and k["status"] == "active" and k["prefix"] not in held:
                orphans.append(f"{plan.name}: {k['id']}")

    consumers = world.consumers
    requests = sum(c.requests for c in consumers)
    auth_failures = sum(c.auth_failures for c in consumers)
    idle_consumers = [c.name for c in consumers if c.requests == 0]
    known = set().union(*(c.values for c in consumers)) | final_values | {world.admin_key}
    scanned = [p for d in (world.workdir / "runs", world.state_dir) for p in d.rglob("*") if p.is_file()]
    leaked = invariants.leaks(scanned, known)
    tracebacks = driver.unexpected + [
        name
        for name in ("final.err", "again.err")
        if b"Traceback" in (world.workdir / "runs" / name).read_bytes()
    ]
    budget = parse_duration(cfg.propagation) + parse_duration(cfg.drain)
    early = invariants.early_revokes(entries, budget)
    doubles = invariants.double_mints(vendor, entries, scopes)
    times = invariants.rotations(entries)
    done = invariants.completed(entries)
    chain = journal.verify()
    statuses = Counter(status for _, _, status in emulator.request_log())
    proxy = Counter[str]()
    for p in (world.aws_proxy, world.vault_proxy):
        if p is not None:
            proxy.update(p.stats)
    final_rc, again_rc, idle, _ = final
    exits = ", ".join(f"{k} {v}" for k, v in sorted(driver.exits.items()))
    rows: list[tuple[str, str, bool | None]] = [
        ("rotations completed", str(done), done >= cfg.rotations),
        ("rotator passes (how they ended: count)", f"{driver.launched} ({exits})", None),
        ("keys skipped: lease held by another pass", str(driver.busy), None),
        ("consumer requests", str(requests), requests > 0),
        ("consumers that never called the vendor", str(len(idle_consumers)), not idle_consumers),
        ("consumer auth failures (401)", str(auth_failures), auth_failures == 0),
        (
            "consumer store reads failed (kept key)",
            str(sum(sum(c.read_errors.values()) for c in consumers)),
            None,
        ),
        ("keys lost (target holds a rejected key)", str(len(lost)), not lost),
        ("orphan keys left active", str(len(orphans)), not orphans),
        ("double mints", str(len(doubles)), not doubles),
        ("raw keys in outputs or state_dir", str(len(leaked)), not leaked),
        ("revokes before propagation + drain", str(len(early)), not early),
        ("targets disagreeing at rest", str(len(disagree)), not disagree),
        (
            "final apply --wait exit / next pass idle",
            f"{final_rc} / {'yes' if idle else 'no'}",
            final_rc == 0 and again_rc == 0 and idle,
        ),
        ("tracebacks or unexpected errors", str(len(tracebacks)), not tracebacks),
        ("journal hash chain", f"{'intact' if chain.ok else 'BROKEN'} ({chain.checked})", chain.ok),
        (
            "time per rotation p50 / p99 (mint -> revoke)",
            f"{invariants.percentile(times, 0.5):.1f}s / {invariants.percentile(times, 0.99):.1f}s",
            None,
        ),
        (
            "vendor faults served (5xx / 429 / dropped)",
            f"{sum(v for s, v in statuses.items() if s >= 500)} / {statuses[429]} / {statuses[0]}",
            None,
        ),
        (
            "store proxy faults (drop / reset / delay)",
            f"{proxy['dropped'] + proxy['refused']} / "
            f"{proxy['reset-request'] + proxy['reset-answer']} / {proxy['delayed']}",
            None,
        ),
        ("OpenBao restarts (data kept)", str(driver.restarts), driver.restarts >= cfg.vault_restarts),
        ("wall time", f"{seconds:.0f}s", None),
    ]
    failures = [f"{what}: {value}" for what, value, ok in rows if ok is False]
    details = (
        idle_consumers + lost + orphans + doubles + early + [f"leak in {p}" for p in leaked] + tracebacks
    )
    details += [f"{c.name}: 401 {f}" for c in consumers for f in c.failures]
    if failures:
        (world.workdir / "failures.txt").write_text("\n".join(failures + details) + "\n")
    return ChaosReport(rows, failures + details[:50], done, seconds, world.workdir)
