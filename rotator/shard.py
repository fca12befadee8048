"""Shards: split a rotation file's keys between N runners that share one lease.

Shard ``I/N`` (``0 <= I < N``) holds the keys whose name hashes to ``I``: the first
8 bytes of the SHA-256 of the key's name, big-endian, modulo ``N``. The hash depends
on the name alone, so every runner agrees on it without talking to the others, and
adding or removing a key moves no other key. An issuer's own management key is a key
like any other: the shard that holds it rotates it.

Where the shard comes from, first found wins: ``--shard I/N``, then ``ROTATOR_SHARD``,
then ``JOB_COMPLETION_INDEX`` (set by Kubernetes in every pod of an Indexed Job) with
``JOB_COMPLETIONS`` (not set by Kubernetes: give it in the Job's ``env``, equal to
``spec.completions``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from rotator.errors import ConfigError

_SPEC = re.compile(r"\s*(\d{1,9})\s*/\s*(\d{1,9})\s*")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 0 <= I < N and N >= 1")

    def owns(self, key: str) -> bool:
        """True when ``key`` belongs to this shard."""
        return shard_of(key, self.count) == self.index

    def select(self, keys: Iterable[str]) -> list[str]:
        """The keys of ``keys`` that belong to this shard, in their order."""
        return [k for k in keys if self.owns(k)]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(key: str, count: int) -> int:
    """The shard (``0 <= shard < count``) that holds ``key``."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def parse(text: str, source: str = "--shard") -> Shard:
    """``I/N`` as a :class:`Shard`.

    :raises ValueError: a one-line message naming ``source`` and what is wrong.
    """
    match = _SPEC.fullmatch(text)
    if match is None:
        raise ValueError(f"{source}: {text!r} is not I/N (e.g. 0/4: the first of four shards)")
    index, count = int(match[1]), int(match[2])
    if count < 1:
        raise ValueError(f"{source}: {text!r}: N must be at least 1")
    if index >= count:
        raise ValueError(f"{source}: {text!r}: I must be below N (shards are numbered 0 to N-1)")
    return Shard(index, count)


def from_env(environ: Mapping[str, str]) -> Shard | None:
    """The shard ``ROTATOR_SHARD`` or a Kubernetes Indexed Job names, if any.

    :raises ConfigError: a malformed value, or ``JOB_COMPLETION_INDEX`` without
        ``JOB_COMPLETIONS`` (running every key in every pod is never what was meant).
    """
    try:
        if environ.get("ROTATOR_SHARD"):
            return parse(environ["ROTATOR_SHARD"], "ROTATOR_SHARD")
        index = environ.get("JOB_COMPLETION_INDEX")
        if index is None or index == "":
            return None
        count = environ.get("JOB_COMPLETIONS")
        if not count:
            raise ConfigError(
                "JOB_COMPLETION_INDEX is set but JOB_COMPLETIONS is not: Kubernetes does not set it; "
                "give it in the Job's env (equal to spec.completions), or set ROTATOR_SHARD=I/N"
            )
        return parse(f"{index}/{count}", "JOB_COMPLETION_INDEX/JOB_COMPLETIONS")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def resolve(option: Shard | None, environ: Mapping[str, str]) -> Shard | None:
    """The shard to run: the command line's, else the environment's, else ``None`` (all keys)."""
    return option if option is not None else from_env(environ)
