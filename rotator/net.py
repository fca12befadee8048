"""The one rule for every endpoint the rotator talks to: TLS, unless the host is loopback."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from rotator.errors import ConfigError

RULE = "only https, or plain http to a loopback address, is allowed"
"""The rule in words, for every message that refuses an endpoint."""


def is_loopback(host: str | None) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ``::1`` (a local emulator or test server)."""
    if not host:
        return False
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def shown(url: str) -> str:
    """``url`` fit for a message: without the user and password it may carry."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<not a URL>"
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def tls_problem(url: str) -> str | None:
    """What is wrong with ``url`` under the rule (https, or plain http to a loopback host), or None.

    The host is judged as written: ``127.0.0.1.nip.io`` or ``localhost.example`` are names that
    resolve anywhere, not loopback addresses.
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "http://[::1" and the like
        return f"not a URL ({exc})"
    if parts.scheme != "https" and not (parts.scheme == "http" and is_loopback(parts.hostname)):
        return f"{shown(url)!r}: {RULE}"
    return None


def require_tls(where: str, url: str) -> None:
    """:class:`ConfigError` unless ``url`` is https, or plain http to a loopback host."""
    problem = tls_problem(url)
    if problem:
        raise ConfigError(f"{where}: {problem}")
