"""How a receiver checks a rotator webhook delivery; the README quotes this file whole."""

import hashlib
import hmac
import time
from collections.abc import Mapping


def verify(secret: str, headers: Mapping[str, str], body: bytes, tolerance: int = 300) -> bool:
    """True when a rotator webhook delivery is authentic and fresh. ``headers`` with lower-case
    names; ``body`` the raw bytes received, before any JSON parsing."""
    timestamp = headers.get("x-rotator-timestamp", "")
    signature = headers.get("x-rotator-signature", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance:
        return False  # malformed, or outside the replay window
    signed = timestamp.encode() + b"." + body
    expected = "v1=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)
