"""Adjudon's trace hash chain: every ingested trace is linked to the one before it.

Entry ``i`` carries ``sha256(head_{i-1} + canonical_json({id, key_id, received_at, body}))``
as hex, with a head of 64 zeros before the first entry. Verifying a window
recomputes each entry in it from the stored hash of its predecessor, so an entry
changed after the fact is found without trusting anything after it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rotator.sandbox._common import iso

GENESIS = "0" * 64


@dataclass
class Trace:
    """One chained entry. ``body`` is mutable only through :meth:`HashChain.tamper`."""

    id: str
    key_id: str
    received_at: datetime
    body: Any
    hash: str


def _link(previous: str, trace_id: str, key_id: str, received_at: datetime, body: Any) -> str:
    payload = json.dumps(
        {"id": trace_id, "key_id": key_id, "received_at": iso(received_at), "body": body},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256((previous + payload).encode()).hexdigest()


class HashChain:
    """An append-only list of traces. Not thread-safe: the emulator's lock guards it."""

    def __init__(self) -> None:
        self._traces: list[Trace] = []

    def append(self, key_id: str, received_at: datetime, body: Any) -> Trace:
        """Link a new trace to the head and return it."""
        trace_id = f"trc_{secrets.token_hex(8)}"
        digest = _link(self.head, trace_id, key_id, received_at, body)
        trace = Trace(trace_id, key_id, received_at, body, digest)
        self._traces.append(trace)
        return trace

    @property
    def head(self) -> str:
        return self._traces[-1].hash if self._traces else GENESIS

    def __len__(self) -> int:
        return len(self._traces)

    def verify(self, start: datetime | None, end: datetime | None) -> dict[str, Any]:
        """Check the traces received in ``[start, end]`` (either bound optional).

        Answers ``{valid, checked, first_invalid, traces_by_key}``; ``first_invalid``
        is the 0-based position in the chain of the first entry that does not match.
        """
        checked = 0
        first_invalid: int | None = None
        by_key: dict[str, int] = {}
        for index, trace in enumerate(self._traces):
            if (start is not None and trace.received_at < start) or (
                end is not None and trace.received_at > end
            ):
                continue
            checked += 1
            by_key[trace.key_id] = by_key.get(trace.key_id, 0) + 1
            previous = self._traces[index - 1].hash if index else GENESIS
            expected = _link(previous, trace.id, trace.key_id, trace.received_at, trace.body)
            if first_invalid is None and expected != trace.hash:
                first_invalid = index
        return {
            "valid": first_invalid is None,
            "checked": checked,
            "first_invalid": first_invalid,
            "traces_by_key": by_key,
        }

    def tamper(self, index: int) -> None:
        """Rewrite the body of entry ``index`` behind the chain's back (for tests)."""
        if not 0 <= index < len(self._traces):
            raise IndexError(f"the chain has no entry {index}")
        self._traces[index].body = {"tampered": True, "was": self._traces[index].body}
