"""The one rule for every endpoint the rotator talks to: TLS, unless the host is loopback."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from rotator.errors import ConfigError


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


def require_tls(where: str, url: str) -> None:
    """:class:`ConfigError` unless ``url`` is https, or plain http to a loopback host."""
    parts = urlsplit(url)
    if parts.scheme != "https" and not (parts.scheme == "http" and is_loopback(parts.hostname)):
        raise ConfigError(f"{where}: {url!r}: only https, or plain http to a loopback address, is allowed")
