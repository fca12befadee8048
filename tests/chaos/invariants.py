"""What the chaos run checks at the end, from the vendor's, the stores' and the journal's state.

Each check is a pure function of data the harness collected, so a reader can see exactly
what "0 keys lost" or "0 double mints" means:

* :func:`rotations` - completed rotations and their time from mint to revoke of the old key;
* :func:`early_revokes` - revokes that came before ``promoted_at + propagation + drain``
  (DESIGN.md invariant 1);
* :func:`double_mints` - two keys minted for the same key while the first attempt was
  still unresolved (invariant 2: never mint while an unresolved attempt exists);
* :func:`leaks` - raw keys in any captured output or file under the state directory
  (invariant 5);
* :func:`restarts` - for keys whose consumers read once at start, how many times each
  attempt restarted its service, and whether a rotator process died during that roll.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from rotator.abc import parse_time

RAW_KEY = re.compile(rb"adj_live_[0-9a-f]{64}|adj_agent_[0-9a-f]{48}|sk_live_[A-Za-z0-9]{40}")


def _ts(entry: Mapping[str, Any]) -> datetime:
    return parse_time(str(entry["ts"]))


def _per_key(journal: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for entry in journal:
        if entry.get("key"):
            out[str(entry["key"])].append(entry)
    return out


def rotations(journal: Sequence[Mapping[str, Any]]) -> list[float]:
    """Seconds from the mint of each new key to the revoke of the key it replaced.

    A rotation is complete when, after a new key was promoted, the old one is revoked
    (journal event ``revoked``, the drain's revoke; orphans are ``orphan-revoked``).
    """
    out = []
    for events in _per_key(journal).values():
        minted: dict[str, datetime] = {}
        promoted: list[str] = []
        done: set[str] = set()
        for e in events:
            key_id = e["details"].get("key_id")
            if e["event"] == "minted" and key_id:
                minted[key_id] = _ts(e)
            elif e["event"] == "promoted" and key_id and key_id not in promoted:
                promoted.append(key_id)
            elif e["event"] == "revoked":
                newer = [p for p in promoted if p != key_id]
                if newer and newer[-1] not in done and newer[-1] in minted:
                    done.add(newer[-1])
                    out.append((_ts(e) - minted[newer[-1]]).total_seconds())
    return out


def completed(journal: Sequence[Mapping[str, Any]]) -> int:
    """Drain revokes: each ends one rotation."""
    return sum(1 for e in journal if e["event"] == "revoked")


def early_revokes(journal: Sequence[Mapping[str, Any]], budget: timedelta) -> list[str]:
    """Revokes of an old key sooner than ``budget`` (propagation + drain) after promotion."""
    bad = []
    for key, events in _per_key(journal).items():
        promoted_at: dict[str, datetime] = {}
        current: str | None = None
        for e in events:
            d = e["details"]
            if e["event"] == "promoted" and d.get("promoted_at"):
                promoted_at.setdefault(d["key_id"], parse_time(d["promoted_at"]))
                current = d["key_id"]
            elif e["event"] == "revoked" and current is not None and current != d.get("key_id"):
                gap = _ts(e) - promoted_at[current]
                if gap < budget:
                    bad.append(f"{key}: {d.get('key_id')} revoked {gap.total_seconds():.2f}s after promotion")
    return bad


def double_mints(
    vendor: Iterable[Mapping[str, Any]],
    journal: Sequence[Mapping[str, Any]],
    scopes: Mapping[str, str],
) -> list[str]:
    """Keys minted for the same key while an earlier attempt was unresolved.

    ``scopes`` maps each declared key to its agent_id. An attempt is unresolved from its
    key's ``created_at`` until the first of: its promotion (journal), its revoke (vendor),
    or the revoke of another key of the scope after it was minted (the old key drained: the
    attempt was promoted even if a kill lost the journal line).
    """
    promoted: dict[str, datetime] = {}
    for e in journal:
        key_id = e["details"].get("key_id")
        if e["event"] == "promoted" and key_id:
            promoted.setdefault(key_id, _ts(e))
    bad = []
    infos = list(vendor)
    for key, agent_id in scopes.items():
        scope = [k for k in infos if k.get("agent_id") == agent_id]
        ours = sorted(
            (k for k in scope if str(k["name"]).startswith(f"rotator:{key}:")),
            key=lambda k: parse_time(k["created_at"]),
        )
        revoked = {k["id"]: parse_time(k["revoked_at"]) for k in scope if k["revoked_at"]}
        for i, first in enumerate(ours):
            created = parse_time(first["created_at"])
            ends = [t for kid, t in revoked.items() if t > created or kid == first["id"]]
            if first["id"] in promoted:
                ends.append(promoted[first["id"]])
            resolved = min(ends, default=None)
            for second in ours[i + 1 :]:
                if resolved is None or parse_time(second["created_at"]) < resolved:
                    bad.append(f"{key}: {second['id']} minted while {first['id']} was unresolved")
    return bad


def leaks(paths: Iterable[Path], known: set[str]) -> list[str]:
    """Files holding a raw key (any key-shaped string, or a known raw value): names only."""
    found = []
    # every Adjudon and Adjutor key has a fixed shape that RAW_KEY finds; only others need probing
    probes = [k.encode() for k in known if k and not RAW_KEY.fullmatch(k.encode())]
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if RAW_KEY.search(data) or any(p in data for p in probes):
            found.append(str(path))
    return found


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0-1) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered), math.ceil(q * len(ordered))) - 1)]


def table(rows: Sequence[tuple[str, str, bool | None]]) -> str:
    """One plain-text table: what, value, and ok / FAIL for the invariant rows."""
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    line = "-" * (width + vwidth + 12)
    out = [line, f"{'check':<{width}}  {'value':>{vwidth}}  status", line]
    for what, value, ok in rows:
        status = "" if ok is None else ("ok" if ok else "FAIL")
        out.append(f"{what:<{width}}  {value:>{vwidth}}  {status}".rstrip())
    out.append(line)
    return "\n".join(out)


@dataclass(frozen=True)
class AttemptRestarts:
    """One attempt of a read-once key: the service generations started with its key."""

    key: str
    attempt: str
    restarts: int
    rolled: bool
    """The journal shows the attempt's consumer rolled."""
    hit: bool
    """A rotator process died (SIGKILL, crash hook) while this roll was in flight, or the roll
    failed once: the consumer may have run twice."""

    @property
    def ok(self) -> bool:
        """At most 2 restarts; exactly 1 for a roll nothing interrupted; 1 at least once rolled."""
        if not self.rolled:
            return False
        return 1 <= self.restarts <= (2 if self.hit else 1)


def restarts(
    journal: Sequence[Mapping[str, Any]],
    generations: Mapping[str, Sequence[tuple[str, datetime]]],
    deaths: Sequence[tuple[datetime, frozenset[str] | None]],
    slack: timedelta = timedelta(seconds=0.5),
) -> list[AttemptRestarts]:
    """Every promoted attempt of each key in ``generations`` (``key -> [(fingerprint, started)]``,
    one per service process). A roll is in flight from the attempt's promotion (or its first
    generation's start) to its ``rolled`` entry. ``deaths`` are when rotator processes died and
    the keys whose leases each held (``None``: not known, any key)."""
    out = []
    per_key = _per_key(journal)
    for key, gens in generations.items():
        promoted: dict[str, tuple[str, datetime]] = {}
        rolled: dict[str, datetime] = {}
        failed: set[str] = set()
        for e in per_key.get(key, []):
            attempt, d = e.get("attempt"), e["details"]
            if not attempt:
                continue
            if e["event"] == "promoted":
                promoted.setdefault(attempt, (str(d.get("fingerprint")), _ts(e)))
            elif e["event"] == "rolled":
                rolled.setdefault(attempt, _ts(e))
            elif e["event"] == "roll-failed":
                failed.add(attempt)
        for attempt, (fp, promoted_at) in promoted.items():
            started = [t for g_fp, t in gens if g_fp == fp]
            begin = min([promoted_at, *started]) - slack
            end = (
                rolled[attempt] + slack
                if attempt in rolled
                else datetime.max.replace(tzinfo=promoted_at.tzinfo)
            )
            hit = attempt in failed or any(
                begin <= t <= end and (held is None or key in held) for t, held in deaths
            )
            out.append(AttemptRestarts(key, attempt, len(started), attempt in rolled, hit))
    return out
