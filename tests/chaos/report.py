"""The end of a chaos run: every invariant checked against the final state, in one table."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rotator.abc import parse_time
from rotator.audit import Journal
from rotator.sandbox.readonce import read_key
from rotator.secret import fingerprint
from rotator.spec import parse_duration
from tests.chaos import invariants
from tests.chaos.world import SERVICE_VAR, World

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
    readonce_rows, readonce_details = readonce(world, entries, driver.deaths)
    dirs = (world.workdir / "runs", world.state_dir, world.workdir / "services")
    scanned = [p for d in dirs for p in d.rglob("*") if p.is_file()]
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
        *readonce_rows,
        ("OpenBao restarts (data kept)", str(driver.restarts), driver.restarts >= cfg.vault_restarts),
        ("wall time", f"{seconds:.0f}s", None),
    ]
    failures = [f"{what}: {value}" for what, value, ok in rows if ok is False]
    details = (
        idle_consumers + lost + orphans + doubles + early + [f"leak in {p}" for p in leaked] + tracebacks
    )
    details += readonce_details
    details += [f"{c.name}: 401 {f}" for c in consumers for f in c.failures]
    if failures:
        (world.workdir / "failures.txt").write_text("\n".join(failures + details) + "\n")
    return ChaosReport(rows, failures + details[:50], done, seconds, world.workdir)


Row = tuple[str, str, bool | None]


def readonce(
    world: World, entries: Sequence[Mapping[str, Any]], deaths: Sequence[Any]
) -> tuple[list[Row], list[str]]:
    """The read-once services' rows: each serves the final key from one live generation, no
    generation ever met a 401, each attempt restarted its service once (twice at most when a
    pass died during the roll), every read-once key rotated, and each GitHub secret holds the
    final key. Stops the services (after looking at which are live)."""
    if not world.services:
        return [], []
    details: list[str] = []
    not_final, not_single = [], []
    published = world.published()
    for name, service in world.services.items():
        final = read_key(service.env_file, SERVICE_VAR)
        live = service.totals().running
        if len(live) != 1:
            not_single.append(f"{name}: {len(live)} live generations {[g.pid for g in live]}")
        if final is None or any(g.fingerprint != fingerprint(final) for g in live) or not live:
            not_final.append(f"{name}: serving {[g.prefix for g in live]}, final key {(final or '')[:13]}")
        if final is None or published.get(name) != final:
            not_final.append(f"{name}: the GitHub secret does not hold the final key")
        service.stop()
    totals = {name: s.totals() for name, s in world.services.items()}
    gens = {
        name: [(g.fingerprint, parse_time(g.started_at)) for g in t.generations] for name, t in totals.items()
    }
    attempts = invariants.restarts(entries, gens, deaths)
    bad = [a for a in attempts if not a.ok]
    details += not_single + not_final
    details += [
        f"{a.key}: attempt {a.attempt} restarted {a.restarts}x (rolled {a.rolled}, hit {a.hit})" for a in bad
    ]
    requests = sum(t.requests for t in totals.values())
    auth = sum(t.auth_failures for t in totals.values())
    idle = [name for name, t in totals.items() if t.accepted == 0]
    details += [f"{name}: service never made an accepted call" for name in idle]
    completed = Counter(str(e.get("key")) for e in entries if e["event"] == "revoked")
    fewest = min(completed[name] for name in world.services)
    most = max((a.restarts for a in attempts), default=0)
    rows: list[Row] = [
        (
            "read-once services: requests (refused 5xx/429) / generations",
            f"{requests} ({sum(t.other_failures for t in totals.values())}) / "
            f"{sum(len(t.generations) for t in totals.values())}",
            requests > 0 and not idle,
        ),
        ("read-once auth failures (401, every generation)", str(auth), auth == 0),
        ("read-once: not serving the final key (service, GitHub)", str(len(not_final)), not not_final),
        ("read-once services without exactly one live generation", str(len(not_single)), not not_single),
        (
            "restarts per attempt: most / attempts / after a crash",
            f"{most} / {len(attempts)} / {sum(a.hit for a in attempts)}",
            not bad and bool(attempts),
        ),
        ("read-once rotations completed (fewest for one key)", str(fewest), fewest >= 1),
    ]
    return rows, details
