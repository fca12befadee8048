"""Every seam of the rotator in one file: the value types that cross them and the
Protocols that backends implement.

* :class:`Issuer` - a vendor that mints, lists, revokes and probes keys
  (``rotator.vendors``).
* :class:`SecretStore` - a place consumers read a key from (``providers``).
* :class:`WriteOnlyTarget` - a place consumers read a key from that cannot be read back (a CI
  secret, a function's environment): what was written is recorded in the journal.
* :class:`Consumer` - something rolled once the new key is everywhere (a restart, a redeploy,
  a webhook), so that what read the key once reads the new one (``rotator.consumers``).
* :class:`Lease` - one writer per key (``rotator.engine.lease``).

Both backend Protocols are kept to the few methods every backend can honour. What only
some backends can do is declared by a small runtime-checkable Protocol of its own
(:class:`Closeable`, :class:`Retiring`, :class:`Reactivating`, :class:`ChainAuditing`,
:class:`VendorClock`, :class:`AppScoped`, :class:`Losable`): the
engine asks ``isinstance(x, Ability)``, which mypy checks, never ``getattr``. The engine
(``rotator.engine``) speaks only to these.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC as _UTC
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

from rotator.secret import Secret

# --------------------------------------------------------------------------- stamps


@dataclass(frozen=True)
class Stamp:
    """What the rotator records beside every version it writes (metadata, never the value).

    Stamps let a fresh process, with no local state, know where each key stands.
    """

    key_id: str
    """The vendor's id of the key this version holds."""
    fingerprint: str
    """First 12 hex of SHA-256 of the value (see :func:`rotator.secret.fingerprint`)."""
    attempt: str
    """The rotation attempt that wrote it."""
    promoted_at: datetime | None = None
    """When this version became current; ``None`` while staged."""

    def to_dict(self) -> dict[str, str]:
        """Flat string map, fit for tags, labels, annotations and custom metadata."""
        out = {
            "rotator-key-id": self.key_id,
            "rotator-fingerprint": self.fingerprint,
            "rotator-attempt": self.attempt,
        }
        if self.promoted_at is not None:
            out["rotator-promoted-at"] = _iso(self.promoted_at)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, str] | None) -> Stamp | None:
        """Inverse of :meth:`to_dict`; ``None`` when the map holds no stamp."""
        if not data or "rotator-attempt" not in data:
            return None
        promoted = data.get("rotator-promoted-at")
        return cls(
            key_id=data.get("rotator-key-id", ""),
            fingerprint=data.get("rotator-fingerprint", ""),
            attempt=data["rotator-attempt"],
            promoted_at=parse_time(promoted) if promoted else None,
        )

    def to_json(self) -> str:
        """Compact JSON (``{"k","f","a","p"?}``): fits one annotation or metadata entry."""
        data = {"k": self.key_id, "f": self.fingerprint, "a": self.attempt}
        if self.promoted_at is not None:
            data["p"] = _iso(self.promoted_at)
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Stamp | None:
        """Inverse of :meth:`to_json`; ``None`` for text that is not ours or was damaged
        (the version then reads as unstamped)."""
        try:
            data = json.loads(text)
            promoted = data.get("p")
            return cls(
                str(data["k"]), str(data["f"]), str(data["a"]), parse_time(promoted) if promoted else None
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


def _iso(t: datetime) -> str:
    return t.astimezone(_UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 time (``Z`` or an offset) into an aware UTC datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(_UTC)


def format_time(t: datetime) -> str:
    """RFC 3339 UTC with microseconds and a ``Z``."""
    return _iso(t)


# --------------------------------------------------------------------------- stores


@dataclass(frozen=True)
class StoredVersion:
    """One version of a secret as a store holds it."""

    version: str
    """The store's own id of the version (AWS VersionId, KV v2 version number, ...)."""
    value: Secret
    """The key held (for the target's ``field``, when one is set)."""
    stamp: Stamp | None
    """The rotator's stamp, or ``None`` for a version the rotator did not write."""

    @property
    def fingerprint(self) -> str:
        return self.value.fingerprint

    def written_by(self, stamp: Stamp) -> bool:
        """True when ``stamp``'s attempt wrote this very value: staging it again is a no-op."""
        return (
            self.stamp is not None
            and self.stamp.attempt == stamp.attempt
            and self.fingerprint == stamp.fingerprint
        )


@dataclass(frozen=True)
class TargetState:
    """What one target holds now.

    ``current`` is what consumers read; ``pending`` a version staged by the
    rotator and not yet current (``None`` when there is none, or when it has
    been promoted). ``revision`` is an opaque token of the whole secret's state
    at read time, handed back to :meth:`SecretStore.stage` so a concurrent
    writer is detected.
    """

    current: StoredVersion | None
    pending: StoredVersion | None
    revision: str | None = None

    @property
    def exists(self) -> bool:
        return self.current is not None or self.pending is not None


@runtime_checkable
class SecretStore(Protocol):
    """A target consumers read a key from.

    Rules every store follows (the contract suite in ``tests/`` checks them):

    * Values never appear in exceptions, logs or metadata; errors are
      :class:`rotator.errors.StoreError` subclasses naming :attr:`name`.
    * A missing secret reads as ``TargetState(None, None)``; it is created by
      the first :meth:`stage`.
    * With a ``field`` set, the secret is a JSON (or dotenv) map; only that
      field is read and written, the others are kept. A value that is not such a
      map is :class:`rotator.errors.StoreFormatError`.
    """

    @property
    def name(self) -> str:
        """Human name of the target, e.g. ``aws:prod/payments/adjudon#ADJUDON_API_KEY``."""
        ...

    def read(self) -> TargetState:
        """Current and pending versions with their stamps."""
        ...

    def stage(self, value: Secret, stamp: Stamp, *, expected: str | None) -> None:
        """Durably write ``value`` as the pending version, stamped with ``stamp``.

        Idempotent: if ``stamp.attempt`` is already staged (or current) with the
        same fingerprint, return without writing. Otherwise, when ``expected`` is
        not ``None`` and the secret's revision is no longer ``expected``, raise
        :class:`rotator.errors.StoreConflict` and write nothing.
        """
        ...

    def promote(self, attempt: str, promoted_at: datetime) -> None:
        """Make the version staged by ``attempt`` current and stamp ``promoted_at``.

        Idempotent: no-op when that attempt is already current. Raises
        :class:`rotator.errors.StoreNotFound` when no version of ``attempt`` exists.
        """
        ...

    def check_access(self) -> None:
        """Raise a :class:`rotator.errors.StoreError` unless we may read and write.

        Used before a cutover reset, which revokes the old key at once.
        """
        ...


@runtime_checkable
class WriteOnlyTarget(Protocol):
    """A target the rotator can write but not read back: a GitHub Actions secret, one
    environment variable of a Lambda function.

    The engine writes the new key to it once the key is current in every readable target, and
    records in the journal what it wrote (fingerprint, attempt, time); the vendor's activity
    remains the proof that its consumers moved. A key needs at least one readable target, which
    keeps the value. Errors are :class:`rotator.errors.StoreError` subclasses naming
    :attr:`name`; values never appear in them.
    """

    @property
    def name(self) -> str:
        """Human name, e.g. ``github:acme/payments#ADJUDON_API_KEY``."""
        ...

    def write(self, value: Secret, stamp: Stamp) -> None:
        """Make ``value`` what the target holds, and return once it took effect (for a function:
        its update finished, so invocations from now on get it). Writing the same value again
        is harmless. Other contents of the target (other variables) are kept."""
        ...

    def check_access(self) -> None:
        """Raise a :class:`rotator.errors.StoreError` unless the target exists and we may write it."""
        ...


# --------------------------------------------------------------------------- consumers


RollPhase = Literal["rotation", "reset", "emergency"]


@dataclass(frozen=True)
class RollEvent:
    """What a consumer is told when it is rolled: the new key's id, prefix and fingerprint,
    never its value (a consumer reads the value where it always does: its target)."""

    key: str
    """The key's name in the rotation file."""
    attempt: str
    """The rotation attempt that minted (or reset to) the new key."""
    phase: RollPhase
    """Why: a planned rotation, a cutover reset, or an emergency after a leak."""
    key_id: str
    prefix: str
    fingerprint: str

    def to_dict(self) -> dict[str, str]:
        return {
            "key": self.key,
            "attempt": self.attempt,
            "phase": self.phase,
            "key_id": self.key_id,
            "prefix": self.prefix,
            "fingerprint": self.fingerprint,
        }


@runtime_checkable
class Consumer(Protocol):
    """Something that reads a key once (at start) and must be rolled to read the new one.

    The engine rolls each consumer of a key once per attempt, after the new key is current in
    every readable target and written to every write-only one, and journals each roll. Rules
    every consumer follows (``tests/test_consumer_contract.py`` checks them):

    * :meth:`roll` returns only once the roll is complete (a restarted workload is up, a
      deployment finished, a hook answered 2xx); it raises otherwise.
    * Errors are :class:`rotator.errors.ConsumerError` subclasses naming :attr:`name`:
      :class:`~rotator.errors.ConsumerTimeout` when it did not finish within the consumer's
      ``timeout``, :class:`~rotator.errors.ConsumerUnavailable` when its API could not be
      reached. No key value ever reaches a consumer, its messages or its logs.
    * ``stop`` set (SIGTERM) ends a wait early with a ``ConsumerError``: the engine retries
      the consumer on the next pass (a second restart then is harmless; a roll the journal
      shows done is never repeated).
    """

    @property
    def name(self) -> str:
        """Stable human name, e.g. ``kubernetes:pay/Deployment/api``: the journal records each
        roll under it, so it must not change between runs for the same declaration."""
        ...

    def roll(self, event: RollEvent, *, stop: threading.Event) -> None: ...


# --------------------------------------------------------------------------- issuers


KeyStatus = Literal["active", "inactive", "revoked"]


@dataclass(frozen=True)
class VendorKey:
    """A key as the vendor lists it. Never holds the raw value."""

    id: str
    prefix: str
    name: str
    status: KeyStatus
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.status == "active"


@dataclass(frozen=True)
class Minted:
    """A key just created: its listing and the raw value, shown once."""

    key: VendorKey
    value: Secret = field(repr=False)


@dataclass(frozen=True)
class Activity:
    """The vendor's usage data for one key."""

    key_id: str
    last_used_at: datetime | None
    requests_since: int | None = None


@dataclass(frozen=True)
class Capabilities:
    """What an issuer can do; the engine picks a strategy from it."""

    max_active: int
    """How many keys may be active at once in one scope (2 overlap, 1 reset)."""
    overlap: bool
    """True: mint a second key beside the first. False: a reset replaces it at once."""
    prefix_len: int
    """How many leading characters of a key the vendor shows as its prefix."""


class Issuer(Protocol):
    """A vendor that issues keys, bound to one scope (a workspace, an agent, an app)."""

    @property
    def capabilities(self) -> Capabilities: ...

    @property
    def name(self) -> str:
        """Human name, e.g. ``adjudon-prod/agent:payments``."""
        ...

    def list_keys(self) -> list[VendorKey]:
        """Every key of this scope, active and revoked."""
        ...

    def mint(self, name: str, *, current: Secret | None = None) -> Minted:
        """Create a key named ``name``; reset vendors need (and revoke) ``current``.

        The raw value's format is checked before this returns.
        """
        ...

    def activity(self, key_id: str, since: datetime | None = None) -> Activity:
        """Usage of ``key_id``: ``last_used_at`` and requests since ``since``."""
        ...

    def revoke(self, key_id: str) -> VendorKey:
        """Revoke ``key_id``. Idempotent."""
        ...

    def probe(self, value: Secret) -> bool:
        """True when the vendor accepts ``value`` (a cheap authenticated call).

        False on 401/403; transient failures raise after bounded retries.
        """
        ...

    def matches(self, value: Secret, key: VendorKey) -> bool:
        """True when ``value`` is the raw form of ``key`` (by its prefix)."""
        ...


@runtime_checkable
class VendorClock(Protocol):
    """An issuer that knows the vendor's time (e.g. from its answers' ``Date`` header), so
    the drain compares ``promoted_at`` with ``last_used_at`` in one clock."""

    def vendor_now(self) -> datetime | None:
        """The vendor's time now, as last learnt; ``None`` before any answer told it."""
        ...


# --------------------------------------------------------------------------- optional abilities


@runtime_checkable
class Closeable(Protocol):
    """An issuer holding connections to close when the engine is done with it."""

    def close(self) -> None: ...


@runtime_checkable
class Retiring(Protocol):
    """A store that can disable its old versions holding a revoked key (GCP), so no consumer
    pinned to one keeps a dead key."""

    def retire(self, key_id: str) -> list[int]:
        """Disable the versions stamped with ``key_id``; the versions disabled.

        :raises StoreError: when the store refuses; the revoke itself already happened.
        """
        ...


@runtime_checkable
class Reactivating(Protocol):
    """An issuer whose revoke deactivates before it deletes (IAM): a deactivated key can be
    made active again."""

    def reactivate(self, key_id: str) -> VendorKey: ...


class ChainResult(Protocol):
    """A vendor's check of its trace hash chain over a window."""

    @property
    def valid(self) -> bool: ...

    @property
    def checked(self) -> int: ...

    @property
    def first_invalid(self) -> int | None: ...

    @property
    def traces_by_key(self) -> Mapping[str, int]: ...


@runtime_checkable
class ChainAuditing(Protocol):
    """An issuer whose vendor keeps a hash chain of traces that an emergency audits for the
    exposure window."""

    def verify_chain(self, start: datetime | None = None, end: datetime | None = None) -> ChainResult: ...


@runtime_checkable
class AppScoped(Protocol):
    """An issuer's configuration bound to one app of the vendor (a reset vendor)."""

    app_id: str


# --------------------------------------------------------------------------- leases


@dataclass(frozen=True)
class LeaseInfo:
    """Who holds a key's lease and since when."""

    key: str
    owner: str
    acquired_at: datetime


class Lease(Protocol):
    """A per-key mutual exclusion between runners (cron, Lambda, a person)."""

    def acquire(self, key: str) -> AbstractContextManager[LeaseInfo]:
        """Hold ``key``'s lease for the ``with`` block.

        :raises LeaseBusy: at once, naming the holder, when another runner holds it.
        """
        ...


@runtime_checkable
class Losable(Protocol):
    """A held lease that can be lost while held (a renewed DynamoDB lease): ``lost`` is set
    when a renewal finds another runner took it."""

    lost: threading.Event
