"""Logging set-up with a last line of defence: anything shaped like a vendor key is masked."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

KEY_PATTERNS = re.compile(r"adj_live_[0-9a-f]{64}|adj_agent_[0-9a-f]{48}|sk_live_[A-Za-z0-9]{40}")


def redact(text: str) -> str:
    """Mask every substring shaped like a vendor key."""
    return KEY_PATTERNS.sub(lambda m: m.group(0)[:12] + "…[redacted]", text)


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


JSON_FIELDS = ("key", "attempt", "phase", "event")
"""Context a log call may pass as ``extra={...}``; ``null`` in the JSON line when absent."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, key, attempt, phase, event, message
    (and ``exception`` with --debug). Every string is redacted as in text logs."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
        }
        for name in JSON_FIELDS:
            value = getattr(record, name, None)
            data[name] = None if value is None else str(value)
        data["message"] = record.getMessage()
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        clean = {k: redact(v) if isinstance(v, str) else v for k, v in data.items()}
        return json.dumps(clean, ensure_ascii=False)


def formatter(fmt: str) -> logging.Formatter:
    """The formatter of a ``--log-format``: ``text`` or ``json``."""
    if fmt == "json":
        return JsonFormatter()
    return RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def configure(level: str, *, debug: bool, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else level)
    if not debug:  # SDK chatter only when asked for
        for noisy in ("botocore", "urllib3", "httpx", "httpcore", "hvac", "grpc"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    # Never, even with --debug: these log whole request and response bodies, secret values included.
    for body_logger in ("botocore.parsers", "botocore.endpoint", "hpack", "urllib3.connectionpool"):
        logging.getLogger(body_logger).setLevel(logging.INFO)
