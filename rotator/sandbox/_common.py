"""Request and response values shared by the emulated vendors."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rotator.abc import format_time


@dataclass(frozen=True)
class Request:
    """One request as the emulator sees it, transport aside."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    """Header names in lower case."""
    body: bytes
    request_id: str
    now: datetime
    """The emulator's clock, read once per request so every time in it agrees."""

    def param(self, name: str) -> str | None:
        """The first value of query parameter ``name``, if any."""
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class Response:
    """What the emulator answers; ``status`` 0 means: drop the connection unanswered."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class BadBody(ValueError):
    """The request body is not what the endpoint accepts."""


def digest(raw: str) -> str:
    """SHA-256 hex of a raw key: the only form the vendors keep."""
    return hashlib.sha256(raw.encode()).hexdigest()


def iso(t: datetime | None) -> str | None:
    """RFC 3339 UTC with a ``Z``, or ``None``."""
    return None if t is None else format_time(t)


def json_body(raw: bytes, *, empty: Any = None) -> Any:
    """Decode a JSON body; ``empty`` stands for an empty one. Raises :class:`BadBody`."""
    if not raw.strip():
        if empty is None:
            raise BadBody("the body must be JSON")
        return empty
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadBody("the body is not valid JSON") from exc


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` value; fractions are kept so tests can back off quickly."""
    if float(seconds).is_integer():
        return str(int(seconds))
    return f"{seconds:.3f}".rstrip("0")


def adjudon_error(
    req: Request, status: int, code: str, message: str, data: dict[str, Any] | None = None
) -> Response:
    """An Adjudon error body: ``{"error": {code, message, data?}, "request_id"}``."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return Response(status, {"error": error, "request_id": req.request_id})


def adjutor_error(status: int, message: str) -> Response:
    """An Adjútor error body: ``{"status": "error", "message"}``."""
    return Response(status, {"status": "error", "message": message})


def adjutor_ok(message: str, data: Any) -> Response:
    """An Adjútor success body."""
    return Response(200, {"status": "success", "message": message, "data": data})
