"""The ``Secret`` value type: a raw key whose repr and str never show it."""

from __future__ import annotations

import hashlib
from typing import Final

_MASK: Final = "********"


def fingerprint(raw: str) -> str:
    """The first 12 hex digits of SHA-256 of ``raw``: how humans and stamps name a key."""
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


class Secret:
    """A raw key value. ``str()``, ``repr()`` and f-strings show a mask, never the value.

    Call :meth:`reveal` at the one place that must hand the value to an SDK or
    an HTTP header.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret wraps a str")
        self._value = value

    def reveal(self) -> str:
        """The raw value. Only for SDK calls and HTTP headers."""
        return self._value

    @property
    def fingerprint(self) -> str:
        """First 12 hex digits of SHA-256 of the value."""
        return fingerprint(self._value)

    def prefix(self, n: int) -> str:
        """The first ``n`` characters, as vendors show them (e.g. 13 for Adjudon)."""
        return self._value[:n]

    def __repr__(self) -> str:
        return f"Secret(fp={self.fingerprint})"

    def __str__(self) -> str:
        return _MASK

    def __format__(self, spec: str) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hashlib.sha256(self._value.encode()).digest() == hashlib.sha256(other._value.encode()).digest()

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("a Secret is never pickled")
