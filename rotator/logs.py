"""Logging set-up with a last line of defence: anything shaped like a vendor key is masked."""

from __future__ import annotations

import logging
import re
import sys

KEY_PATTERNS = re.compile(r"adj_live_[0-9a-f]{64}|adj_agent_[0-9a-f]{48}|sk_live_[A-Za-z0-9]{40}")


def redact(text: str) -> str:
    """Mask every substring shaped like a vendor key."""
    return KEY_PATTERNS.sub(lambda m: m.group(0)[:12] + "…[redacted]", text)


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure(level: str, *, debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else level)
    if not debug:  # SDK chatter only when asked for
        for noisy in ("botocore", "urllib3", "httpx", "httpcore", "hvac", "grpc"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    # Never, even with --debug: these log whole request and response bodies, secret values included.
    for body_logger in ("botocore.parsers", "botocore.endpoint", "hpack", "urllib3.connectionpool"):
        logging.getLogger(body_logger).setLevel(logging.INFO)
