"""Reading a vendor's answers: the JSON body, field by field, and errors as kinds.

:func:`read_answer` turns one HTTP answer (status, body bytes, headers) into a
:class:`Reply` or raises the :mod:`rotator.errors` kind its status and error code mean.
:class:`Obj` reads a JSON object defensively: every failure names the endpoint and the
field, never the value. Vendor messages are repeated only with key-like runs cut.
Nothing here sends anything: see :mod:`rotator.vendors._http` for the transport.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from rotator.errors import (
    KeyLimitReached,
    VendorAuthError,
    VendorError,
    VendorNotFound,
    VendorProtocolError,
    VendorRejected,
    VendorUnavailable,
)

MAX_BODY = 1 << 20
"""Largest answer read (1 MiB); a key-management answer is a few hundred bytes."""

# Runs this long of key-like characters are cut from vendor messages: every key
# format is at least 48 of them, so no key survives.
_KEYLIKE = re.compile(r"[A-Za-z0-9_\-+/=.]{16,}")


class Obj:
    """A JSON object from an answer, read field by field with type checks.

    Every failure is a :class:`VendorProtocolError` naming the endpoint and the
    field, never the value.
    """

    def __init__(self, raw: object, where: str) -> None:
        if not isinstance(raw, dict):
            raise VendorProtocolError(f"{where}: expected a JSON object")
        self._raw: dict[str, Any] = raw
        self.where = where

    def __contains__(self, name: str) -> bool:
        return name in self._raw

    def get(self, name: str) -> object:
        """The field as it came, unchecked (``None`` when absent)."""
        return self._raw.get(name)

    def _bad(self, name: str, what: str) -> VendorProtocolError:
        return VendorProtocolError(f"{self.where}: field {name!r} is missing or not {what}")

    def string(self, name: str) -> str:
        value = self._raw.get(name)
        if not isinstance(value, str):
            raise self._bad(name, "a string")
        return value

    def opt_string(self, name: str) -> str | None:
        return None if self._raw.get(name) is None else self.string(name)

    def integer(self, name: str) -> int:
        value = self._raw.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._bad(name, "an integer")
        return value

    def opt_integer(self, name: str) -> int | None:
        return None if self._raw.get(name) is None else self.integer(name)

    def boolean(self, name: str) -> bool:
        value = self._raw.get(name)
        if not isinstance(value, bool):
            raise self._bad(name, "a boolean")
        return value

    def time(self, name: str) -> datetime:
        text = self.string(name)
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise self._bad(name, "an RFC 3339 time") from None
        if parsed.tzinfo is None:
            raise self._bad(name, "an RFC 3339 time with a zone")
        return parsed.astimezone(UTC)

    def opt_time(self, name: str) -> datetime | None:
        return None if self._raw.get(name) is None else self.time(name)

    def obj(self, name: str) -> Obj:
        return Obj(self._raw.get(name), f"{self.where}: field {name!r}")

    def objs(self, name: str) -> list[Obj]:
        value = self._raw.get(name)
        if not isinstance(value, list):
            raise self._bad(name, "a list")
        return [Obj(item, f"{self.where}: {name}[{i}]") for i, item in enumerate(value)]

    def int_map(self, name: str) -> dict[str, int]:
        value = self._raw.get(name)
        if not isinstance(value, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value.values()
        ):
            raise self._bad(name, "a map of integers")
        return {str(k): int(v) for k, v in value.items()}


@dataclass(frozen=True)
class Reply:
    """A successful answer: status and decoded JSON object."""

    where: str
    """``<vendor> <METHOD> <path> (HTTP <status>)``, for messages."""
    status: int
    body: Obj
    request_id: str | None

    def data(self) -> Obj:
        return self.body.obj("data")

    def data_list(self) -> list[Obj]:
        return self.body.objs("data")


@dataclass(frozen=True)
class _ErrorInfo:
    code: str | None = None
    message: str | None = None
    request_id: str | None = None
    retry_after: float | None = None


@dataclass(frozen=True)
class Answer:
    """One HTTP answer, decoded: where it came from, its status, body and error fields."""

    where: str
    """``<vendor> <METHOD> <path> (HTTP <status>)``, for messages."""
    status: int
    raw: bytes | None
    """The body; ``None`` when it was larger than :data:`MAX_BODY`."""
    parsed: object
    info: _ErrorInfo

    @property
    def request_id(self) -> str | None:
        return self.info.request_id

    def reply(self, *, want_data: bool) -> Reply:
        """The :class:`Reply` of a 2xx answer; the error kind of any other."""
        where, status = self.where, self.status
        if 200 <= status < 300:
            if self.raw is None:
                raise VendorProtocolError(f"{where}: answer larger than {MAX_BODY} bytes")
            if not isinstance(self.parsed, dict):
                raise VendorProtocolError(f"{where}: answer is not a JSON object")
            obj = Obj(self.parsed, where)
            if want_data and "data" not in obj:
                raise VendorProtocolError(f"{where}: answer has no 'data'")
            return Reply(where, status, obj, self.info.request_id)
        raise _translate(where, status, self.info)


def read_answer(
    endpoint: str,
    status: int,
    raw: bytes | None,
    headers: Mapping[str, str],
    clock: Callable[[], datetime],
) -> Answer:
    """Decode the answer of ``endpoint`` (``<vendor> <METHOD> <path>``); ``clock`` dates a
    ``Retry-After`` given as an HTTP date."""
    parsed = _decode(raw)
    return Answer(f"{endpoint} (HTTP {status})", status, raw, parsed, _error_info(parsed, headers, clock))


def _decode(raw: bytes | None) -> object:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
        return None


def _error_info(parsed: object, headers: Mapping[str, str], clock: Callable[[], datetime]) -> _ErrorInfo:
    """Code, message, request id and wait hint, from whatever shape the answer has."""
    code = message = None
    hinted: float | None = None
    body = parsed if isinstance(parsed, dict) else {}
    err = body.get("error")
    if isinstance(err, dict):
        code = err.get("code") if isinstance(err.get("code"), str) else None
        message = err.get("message")
        data = err.get("data")
        if isinstance(data, dict):
            seconds = data.get("retry_after_seconds")
            if isinstance(seconds, int | float) and not isinstance(seconds, bool):
                hinted = max(0.0, float(seconds))
    else:
        message = body.get("message")
    request_id = body.get("request_id") or headers.get("x-request-id")
    waits = [w for w in (hinted, _retry_after(headers.get("retry-after"), clock)) if w is not None]
    return _ErrorInfo(
        code=code,
        message=_scrub(message) if isinstance(message, str) else None,
        request_id=request_id if isinstance(request_id, str) else None,
        retry_after=max(waits) if waits else None,
    )


def _retry_after(value: str | None, clock: Callable[[], datetime]) -> float | None:
    """``Retry-After`` in seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - clock()).total_seconds())


def _scrub(message: str) -> str:
    """A vendor message safe to repeat: key-like runs cut, one line, short."""
    text = " ".join(_KEYLIKE.sub("[...]", message).split())
    return text[:160]


def _translate(where: str, status: int, info: _ErrorInfo) -> VendorError:
    detail = where
    if info.code:
        detail += f" {info.code}"
    if info.message:
        detail += f": {info.message}"
    if info.request_id:
        detail += f" (request_id {info.request_id})"
    if status in (401, 403):
        return VendorAuthError(detail, status=status, code=info.code)
    if status == 404:
        return VendorNotFound(detail, status=status, code=info.code)
    if status == 409 and info.code == "KEY_LIMIT_REACHED":
        return KeyLimitReached(detail, status=status, code=info.code)
    if status == 429 or status >= 500:
        return VendorUnavailable(detail, status=status, code=info.code, retry_after=info.retry_after)
    if 400 <= status < 500:
        return VendorRejected(detail, status=status, code=info.code)
    return VendorProtocolError(f"{detail}: unexpected status", status=status, code=info.code)
