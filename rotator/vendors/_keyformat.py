"""The format of an HTTP vendor's keys: a literal prefix, then so many characters of one
alphabet; and the first characters the vendor shows of each key.

One :class:`KeyFormat` per kind of key checks a minted value (:meth:`KeyFormat.problem`)
and tells whether a stored value is a given key (:meth:`KeyFormat.matches`, which
``issuer.matches`` and so ``status`` use). Neither ever puts the value into a message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rotator.abc import VendorKey
from rotator.secret import Secret


@dataclass(frozen=True)
class KeyFormat:
    """``prefix`` then ``length`` characters of ``alphabet`` (a regex class, such as ``0-9a-f``).

    ``name`` says what such a key is ("a workspace key"), ``alphabet_name`` the alphabet
    in words ("hex"); ``shown`` is how many first characters the vendor shows as a key's
    prefix.
    """

    name: str
    prefix: str
    length: int
    alphabet: str
    alphabet_name: str
    shown: int
    _pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pattern = re.compile(f"{re.escape(self.prefix)}[{self.alphabet}]{{{self.length}}}")
        object.__setattr__(self, "_pattern", pattern)

    @property
    def description(self) -> str:
        """The format in words: ``adj_live_ + 64 hex``."""
        return f"{self.prefix} + {self.length} {self.alphabet_name}"

    def fits(self, raw: str) -> bool:
        """True when ``raw`` has this format."""
        return self._pattern.fullmatch(raw) is not None

    def problem(self, raw: object, shown_prefix: str) -> str | None:
        """What is wrong with a minted value whose key the vendor shows as ``shown_prefix``,
        or ``None``; worded to follow "the minted key ...", without the value."""
        if not isinstance(raw, str):
            return "came without its value"
        if not self.fits(raw):
            return f"has a value that is not {self.name} ({self.description})"
        if raw[: self.shown] != shown_prefix:
            return f"has a value that does not start with its prefix {shown_prefix!r}"
        return None

    def matches(self, value: Secret, key: VendorKey) -> bool:
        """True when ``value`` has this format and starts with ``key.prefix``."""
        raw = value.reveal()
        return len(key.prefix) == self.shown and self.fits(raw) and raw[: self.shown] == key.prefix
