"""What a pass observes and what it decides: plain values, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from rotator.abc import Capabilities, StoredVersion, TargetState, VendorKey
from rotator.secret import Secret
from rotator.spec import VerifyPolicy

Strategy = Literal["overlap", "cutover"]
Action = Literal["mint", "reset", "stage", "promote", "revoke", "wait", "hold", "fail", "done"]
Phase = Literal[
    "current",
    "due",
    "minted",
    "staged",
    "promoted",
    "draining",
    "revoked",
    "reset",
    "verified",
    "held",
    "failed",
]


def attempt_name(key: str, attempt: str) -> str:
    """The vendor-side name of a key minted by attempt ``attempt``: how orphans are recognised."""
    return f"rotator:{key}:{attempt}"


def attempt_of(key: str, vendor_key: VendorKey) -> str | None:
    """The attempt id encoded in a vendor key's name, if the rotator minted it for ``key``."""
    prefix = f"rotator:{key}:"
    return vendor_key.name[len(prefix) :] if vendor_key.name.startswith(prefix) else None


@dataclass(frozen=True)
class TargetObs:
    """One target as observed: its state, or why it could not be read."""

    name: str
    state: TargetState | None
    error: str | None = None
    transient: bool = False
    """The read failed for a reason a retry may clear (the store unreachable)."""


@dataclass(frozen=True)
class Observation:
    """Everything ``decide`` needs, gathered by ``observe``."""

    key: str
    now: datetime
    vendor: tuple[VendorKey, ...]
    targets: tuple[TargetObs, ...]
    capabilities: Capabilities
    strategy: Strategy
    policy: VerifyPolicy
    max_age: timedelta
    next_schedule_fire: datetime | None = None
    """The key's cron schedule's first fire after the newest active key was created."""
    force: bool = False
    """A person asked for a rotation now (``rotator rotate``)."""
    bootstrap: Secret | None = field(default=None, repr=False)
    """A reset vendor's first key, given once through ``bootstrap: {env: NAME}``."""
    owners: Mapping[str, tuple[str, ...]] | None = None
    """For each stored fingerprint, the vendor keys the issuer says it is (``Issuer.matches``).
    ``None``: match by the vendor's prefix (hand-built observations in tests)."""
    delete_after: timedelta | None = None
    """Issuers whose revoke is two-step (deactivate, then delete): how long a key stays
    inactive before it is deleted."""
    rejected: frozenset[str] = frozenset()
    """Fingerprints of unstamped stored values that matched a vendor key by prefix but that
    the vendor rejected when probed: broken, never adopted; the key they claim is replaced."""
    clock_offset: timedelta | None = None
    """The vendor's clock minus ours (``now``), learnt from its answers; ``None``: unknown.
    ``decide`` judges every time in the vendor's clock, the one ``last_used_at`` is in."""
    stored_attempts: frozenset[str] = frozenset()
    """Attempts the journal shows writing their key to some target (staged, promoted or
    reset), among those of the active keys no target holds now: such a key was stored once,
    so it is no orphan (a target was renamed or deleted)."""


@dataclass(frozen=True)
class Decision:
    """The next safe step for one key, and why."""

    action: Action
    phase: Phase
    reason: str
    targets: tuple[int, ...] = ()
    revisions: tuple[str | None, ...] = ()
    """For a stage: each target's revision as observed, in ``targets`` order."""
    version: StoredVersion | None = None
    key_id: str | None = None
    until: datetime | None = None
    promoted_at: datetime | None = None

    @property
    def terminal(self) -> bool:
        """True when the pass ends here (nothing more to do now)."""
        return self.action in ("wait", "hold", "fail", "done")
