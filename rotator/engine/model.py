"""What a pass observes and what it decides: plain values, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import ClassVar, Literal

from rotator.abc import Capabilities, RollPhase, StoredVersion, TargetState, VendorKey
from rotator.secret import Secret
from rotator.spec import VerifyPolicy

Strategy = Literal["overlap", "cutover"]
Action = Literal[
    "mint", "reset", "stage", "promote", "publish", "roll", "revoke", "wait", "hold", "fail", "done"
]
Phase = Literal[
    "current",
    "due",
    "minted",
    "staged",
    "promoted",
    "rolling",
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
    write_only: tuple[str, ...] = ()
    """The key's write-only targets, by name, in file order (``Publish.targets`` index them)."""
    published: Mapping[str, str] = field(default_factory=dict)
    """Write-only target name -> fingerprint the journal shows last written there."""
    consumers: tuple[str, ...] = ()
    """The key's consumers, by label, in file order (``Roll.consumers`` index them)."""
    rolled: Mapping[tuple[str, str], datetime] = field(default_factory=dict)
    """(attempt, consumer) -> when the journal shows that roll finished, in the vendor's clock."""
    roll_failures: Mapping[tuple[str, str], str] = field(default_factory=dict)
    """(attempt, consumer) -> the error of its last failed roll, for a roll not done since."""
    emergency: bool = False
    """An emergency pass: consumers are told the roll is for an emergency."""


class _Step:
    """What every decision has: its ``action`` (the verb progress lines and ``stop_before``
    use), its ``phase``, a ``reason`` for people, and ``until`` (when a wait or rest ends)."""

    action: ClassVar[Action]
    terminal: ClassVar[bool] = False
    """True when the pass ends here (nothing more to do now)."""

    @property
    def until(self) -> datetime | None:
        return None


@dataclass(frozen=True)
class Mint(_Step):
    """Overlap: mint a second key and stage it in the first target."""

    reason: str
    key_id: str | None = None
    """The key that is due, if any."""
    action: ClassVar[Action] = "mint"
    phase: ClassVar[Phase] = "due"


@dataclass(frozen=True)
class Reset(_Step):
    """Cutover: reset the vendor's one key (it revokes the old one at once) and write the new
    one to every target."""

    reason: str
    key_id: str | None = None
    action: ClassVar[Action] = "reset"
    phase: ClassVar[Phase] = "due"


@dataclass(frozen=True)
class Stage(_Step):
    """Write ``version`` as pending into ``targets`` (cutover: as current at once)."""

    phase: Literal["minted", "reset"]
    reason: str
    targets: tuple[int, ...]
    revisions: tuple[str | None, ...]
    """Each target's revision as observed, in ``targets`` order: a write since is a conflict."""
    version: StoredVersion
    key_id: str
    action: ClassVar[Action] = "stage"


@dataclass(frozen=True)
class Promote(_Step):
    """Make the staged ``version`` current in ``targets``, stamped ``promoted_at``."""

    reason: str
    targets: tuple[int, ...]
    version: StoredVersion
    key_id: str
    promoted_at: datetime
    action: ClassVar[Action] = "promote"
    phase: ClassVar[Phase] = "staged"


@dataclass(frozen=True)
class Publish(_Step):
    """Write the new key (current in every readable target) to the write-only ``targets``
    (indices into ``Observation.write_only``)."""

    reason: str
    targets: tuple[int, ...]
    version: StoredVersion
    """The new key, stamped."""
    key_id: str
    action: ClassVar[Action] = "publish"
    phase: ClassVar[Phase] = "promoted"


@dataclass(frozen=True)
class Roll(_Step):
    """Roll ``consumers`` (indices into ``Observation.consumers``), in file order, to the new
    key of ``attempt``: each once, journalled as it finishes."""

    reason: str
    consumers: tuple[int, ...]
    attempt: str
    key_id: str
    prefix: str
    fingerprint: str
    roll_phase: RollPhase
    """What the consumers are told the roll is for (:class:`rotator.abc.RollEvent`'s
    ``phase``): a planned rotation, a reset, an emergency."""
    action: ClassVar[Action] = "roll"
    phase: ClassVar[Phase] = "rolling"


@dataclass(frozen=True)
class Revoke(_Step):
    """The old key drained (or timed out with ``on_timeout: revoke``): revoke it, once every
    target reads the new key back and the vendor accepts it."""

    reason: str
    key_id: str
    promoted_at: datetime
    action: ClassVar[Action] = "revoke"
    phase: ClassVar[Phase] = "draining"


@dataclass(frozen=True)
class Delete(_Step):
    """Two-step revoke (IAM): delete a key that has been inactive ``delete_after``, or that
    holds the second key slot when a rotation is due."""

    reason: str
    key_id: str
    action: ClassVar[Action] = "revoke"
    phase: ClassVar[Phase] = "revoked"


@dataclass(frozen=True)
class RevokeOrphan(_Step):
    """Revoke a key the rotator minted that was never stored nor used."""

    reason: str
    key_id: str
    action: ClassVar[Action] = "revoke"
    phase: ClassVar[Phase] = "minted"


@dataclass(frozen=True)
class Wait(_Step):
    """Nothing to do before ``until`` (the drain, or a stop between steps)."""

    phase: Phase
    reason: str
    until: datetime | None = None
    key_id: str | None = None
    promoted_at: datetime | None = None
    action: ClassVar[Action] = "wait"
    terminal: ClassVar[bool] = True


@dataclass(frozen=True)
class Hold(_Step):
    """Stop for a person: acting would break an invariant."""

    reason: str
    key_id: str | None = None
    promoted_at: datetime | None = None
    action: ClassVar[Action] = "hold"
    phase: ClassVar[Phase] = "held"
    terminal: ClassVar[bool] = True


@dataclass(frozen=True)
class Fail(_Step):
    """The pass cannot go on (a target unreadable, a step failed)."""

    reason: str
    action: ClassVar[Action] = "fail"
    phase: ClassVar[Phase] = "failed"
    terminal: ClassVar[bool] = True


@dataclass(frozen=True)
class Done(_Step):
    """At rest: ``key_id`` is current everywhere until it is due at ``until``."""

    reason: str
    key_id: str
    until: datetime | None = None
    action: ClassVar[Action] = "done"
    phase: ClassVar[Phase] = "current"
    terminal: ClassVar[bool] = True


Decision = (
    Mint
    | Reset
    | Stage
    | Promote
    | Publish
    | Roll
    | Revoke
    | Delete
    | RevokeOrphan
    | Wait
    | Hold
    | Fail
    | Done
)
"""The next safe step for one key, and why: what ``decide`` returns."""


# --------------------------------------------------------------------------- orders


@dataclass(frozen=True)
class RevokeLeaked:
    """An emergency's order (not a decision): revoke the leaked key ``key_id`` now."""

    key_id: str
    action: ClassVar[Literal["revoke-leaked"]] = "revoke-leaked"


@dataclass(frozen=True)
class Reactivate:
    """A person's order (``rotator reactivate``): make the deactivated key ``key_id`` active
    again."""

    key_id: str
    action: ClassVar[Literal["reactivate"]] = "reactivate"


Order = RevokeLeaked | Reactivate
"""A step a person or the emergency path asks for, taken by ``act`` like any decision."""
