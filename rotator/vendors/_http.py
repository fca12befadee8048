"""The HTTP transport every vendor client shares.

It owns what the vendor contract asks of all clients: HTTPS (or loopback), the
bearer header, translation of answers into :mod:`rotator.errors` kinds, bounded
retries of transient failures through tenacity, and a defensive JSON reader.
Bodies and headers are never logged nor put into an exception: they may hold a
key.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Self
from urllib.parse import urlsplit

import httpx
import tenacity

from rotator import __version__
from rotator.errors import (
    ConfigError,
    KeyLimitReached,
    Transient,
    VendorAuthError,
    VendorError,
    VendorNotFound,
    VendorOutcomeUnknown,
    VendorProtocolError,
    VendorRejected,
    VendorUnavailable,
)
from rotator.net import tls_problem
from rotator.secret import Secret

LOG = logging.getLogger("rotator.vendors")

MAX_BODY = 1 << 20
"""Largest answer read (1 MiB); a key-management answer is a few hundred bytes."""

_CLOCK_STEP = timedelta(seconds=2)
"""A ``Date`` sample this far from the offset known means a clock was set: start again."""

# Header values must be visible ASCII: anything else makes the HTTP library raise
# an error whose message quotes the header, i.e. the key.
_SENDABLE = re.compile(r"[!-~]{1,4096}")
# Runs this long of key-like characters are cut from vendor messages: every key
# format is at least 48 of them, so no key survives.
_KEYLIKE = re.compile(r"[A-Za-z0-9_\-+/=.]{16,}")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds on retrying transient failures (429, 5xx, network errors)."""

    attempts: int = 5
    """Total tries for transient failures."""
    initial: float = 0.5
    """First backoff in seconds; it doubles each try, plus up to ``initial`` of jitter."""
    maximum: float = 30.0
    """Cap of one backoff (a longer Retry-After is still honoured)."""
    max_total: float = 120.0
    """Give up rather than wait more than this in all."""


def check_base_url(url: str, vendor: str) -> str:
    """``url`` without a trailing slash; :class:`ConfigError` unless HTTPS or loopback HTTP."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("https", "http") or not host:
        raise ConfigError(f"{vendor}: base_url {url!r} is not an http(s) URL")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"{vendor}: base_url must not carry credentials, a query or a fragment")
    problem = tls_problem(url)  # the rule validate applies too
    if problem:
        raise ConfigError(f"{vendor}: base_url {problem}")
    return url.rstrip("/")


# --------------------------------------------------------------------------- answers


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
class _Call:
    method: str
    path: str
    credential: Callable[[], Secret]
    params: Mapping[str, str] | None
    body: Mapping[str, Any] | None
    idempotent: bool
    want_data: bool


@dataclass(frozen=True)
class _ErrorInfo:
    code: str | None = None
    message: str | None = None
    request_id: str | None = None
    retry_after: float | None = None


# --------------------------------------------------------------------------- transport


class VendorHTTP:
    """One vendor's base URL over an ``httpx.Client`` (owned unless one is injected)."""

    def __init__(
        self,
        vendor: str,
        base_url: str,
        *,
        timeout: float = 10.0,
        http: httpx.Client | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.vendor = vendor
        self.base_url = check_base_url(base_url, vendor)
        self._owned = http is None
        self._http = http if http is not None else httpx.Client(follow_redirects=False)
        self._timeout = httpx.Timeout(timeout)
        self._policy = retry or RetryPolicy()
        self._sleep = sleep
        self._clock = clock or (lambda: datetime.now(UTC))
        self._offset: timedelta | None = None
        self._backoff = tenacity.wait_exponential(
            multiplier=self._policy.initial, max=self._policy.maximum
        ) + tenacity.wait_random(0, self._policy.initial)

    def close(self) -> None:
        if self._owned:
            self._http.close()

    def vendor_now(self) -> datetime | None:
        """The vendor's time now: our clock plus the offset its last ``Date`` header showed;
        ``None`` before any answer carried one."""
        offset = self._offset
        return None if offset is None else self._clock() + offset

    def _learn_time(self, date: str | None) -> None:
        """Record vendor time minus our time from an answer's ``Date``. The header has whole
        seconds and is stamped before the answer travels, so each sample is at most the true
        offset: keep the largest, unless a sample moved by more than a second or two (a clock
        was set)."""
        if not date:
            return
        try:
            vendor = parsedate_to_datetime(date)
        except (TypeError, ValueError):
            return
        if vendor.tzinfo is None:
            vendor = vendor.replace(tzinfo=UTC)
        sample = vendor - self._clock()
        known = self._offset
        if known is None or abs(sample - known) > _CLOCK_STEP:
            self._offset = sample
        else:
            self._offset = max(known, sample)

    def call(
        self,
        method: str,
        path: str,
        *,
        credential: Callable[[], Secret],
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        idempotent: bool = True,
        want_data: bool = True,
    ) -> Reply:
        """Send one request, retrying transient failures within the policy.

        ``credential`` is called for every attempt, so a key switched meanwhile is
        picked up. ``idempotent=False`` marks a request that must not run twice.
        """
        call = _Call(method, path, credential, params, body, idempotent, want_data)
        retrying = tenacity.Retrying(
            stop=self._stop,
            wait=self._wait,
            # 429 and 5xx answers are retried even for a POST: the contract has the
            # vendor answer them before processing (a rate limit may come before
            # authentication). Timeouts of a POST are not: see _once.
            retry=tenacity.retry_if_exception(_retryable),
            sleep=self._sleep,
            before_sleep=self._log_wait,
        )
        try:
            for attempt in retrying:
                with attempt:
                    reply = self._once(call, attempt.retry_state.attempt_number)
        except tenacity.RetryError as exc:
            last = exc.last_attempt.exception()
            assert isinstance(last, VendorUnavailable)
            tries = exc.last_attempt.attempt_number
            wait = f"; the vendor asks to wait {last.retry_after:g}s" if last.retry_after else ""
            raise VendorUnavailable(
                f"{last} (gave up after {tries} attempt{'s' if tries > 1 else ''}{wait})",
                status=last.status, code=last.code, retry_after=last.retry_after,
            ) from last
        return reply

    # -- retry policy, as tenacity callbacks

    def _stop(self, state: tenacity.RetryCallState) -> bool:
        if state.attempt_number >= self._policy.attempts:
            return True
        return state.idle_for + state.upcoming_sleep > self._policy.max_total

    def _wait(self, state: tenacity.RetryCallState) -> float:
        backoff = min(self._policy.maximum, self._backoff(state))
        exc = state.outcome.exception() if state.outcome else None
        asked = exc.retry_after if isinstance(exc, Transient) else None
        return max(backoff, asked or 0.0)

    def _log_wait(self, state: tenacity.RetryCallState) -> None:
        LOG.debug(
            "%s: retry %d in %.2fs", self.vendor, state.attempt_number + 1, state.upcoming_sleep
        )

    # -- one attempt

    def _once(self, call: _Call, attempt: int) -> Reply:
        endpoint = f"{self.vendor} {call.method} {call.path}"
        token = call.credential()
        if not _SENDABLE.fullmatch(token.reveal()):
            raise VendorAuthError(
                f"{endpoint}: the credential (fingerprint {token.fingerprint}) is not a "
                "well-formed key; not sent"
            )
        headers = {
            "Authorization": f"Bearer {token.reveal()}",
            "Accept": "application/json",
            "User-Agent": f"rotator/{__version__}",
        }
        try:
            request = self._http.build_request(
                call.method, self.base_url + call.path, params=call.params, json=call.body,
                headers=headers, timeout=self._timeout,
            )
            # Never follow a redirect, even on an injected client: the contract has
            # none, and following one would carry the key to another URL.
            response = self._http.send(request, stream=True, follow_redirects=False)
            try:
                raw = _read_limited(response)
            finally:
                response.close()
        except httpx.TransportError as exc:
            LOG.debug("%s -> %s attempt=%d", endpoint, type(exc).__name__, attempt)
            if not call.idempotent and not isinstance(exc, _NOT_SENT):
                # A POST that mints or resets may have been processed even though
                # no answer came back: repeating it could mint a second key (or
                # reset with a key the first reset revoked). Report it instead;
                # the engine finds an orphan by the attempt id in its name.
                raise VendorOutcomeUnknown(
                    f"{endpoint}: {type(exc).__name__} after the request may have reached "
                    "the vendor; not repeated"
                ) from exc
            raise VendorUnavailable(f"{endpoint}: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            raise VendorProtocolError(
                f"{endpoint}: unreadable answer ({type(exc).__name__})"
            ) from exc

        status = response.status_code
        self._learn_time(response.headers.get("date"))
        where = f"{endpoint} (HTTP {status})"
        parsed = _decode(raw)
        info = _error_info(parsed, response.headers, self._clock)
        LOG.debug(
            "%s -> %d request_id=%s attempt=%d", endpoint, status, info.request_id, attempt
        )
        if 200 <= status < 300:
            if raw is None:
                raise VendorProtocolError(f"{where}: answer larger than {MAX_BODY} bytes")
            if not isinstance(parsed, dict):
                raise VendorProtocolError(f"{where}: answer is not a JSON object")
            obj = Obj(parsed, where)
            if call.want_data and "data" not in obj:
                raise VendorProtocolError(f"{where}: answer has no 'data'")
            return Reply(where, status, obj, info.request_id)
        raise _translate(where, status, info)


# Failures that happen before any byte of the request left: safe to repeat any request.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, Transient) and not isinstance(exc, VendorOutcomeUnknown)


def _read_limited(response: httpx.Response) -> bytes | None:
    """The body, or ``None`` when it is larger than :data:`MAX_BODY` (reading stops there)."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        return None
    buf = bytearray()
    for chunk in response.iter_bytes():
        buf += chunk
        if len(buf) > MAX_BODY:
            return None
    return bytes(buf)


def _decode(raw: bytes | None) -> object:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
        return None


def _error_info(
    parsed: object, headers: httpx.Headers, clock: Callable[[], datetime]
) -> _ErrorInfo:
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
        return VendorUnavailable(
            detail, status=status, code=info.code, retry_after=info.retry_after
        )
    if 400 <= status < 500:
        return VendorRejected(detail, status=status, code=info.code)
    return VendorProtocolError(f"{detail}: unexpected status", status=status, code=info.code)


class HTTPIssuer:
    """What the HTTP vendors' issuers share: their name, one :class:`VendorHTTP`, closing it."""

    _name: str
    _http: VendorHTTP

    @property
    def name(self) -> str:
        return self._name

    def close(self) -> None:
        self._http.close()

    def vendor_now(self) -> datetime | None:
        """The vendor's time, learnt from its answers (see :meth:`VendorHTTP.vendor_now`)."""
        return self._http.vendor_now()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
