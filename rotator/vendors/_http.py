"""The HTTP transport every vendor client shares.

It owns what the vendor contract asks of all clients on the way out: HTTPS (or
loopback) base URLs, the bearer header, no redirects, a bounded body, bounded retries
of transient failures through tenacity, and the vendor's clock learnt from ``Date``.
What an answer means (a :class:`Reply` or an error kind) is read by
:mod:`rotator.vendors._answers`. Bodies and headers are never logged nor put into an
exception: they may hold a key.

Every issuer of one vendor origin (scheme, host and port of its base URL) shares, for the
whole process, one ``httpx.Client`` (created on the first request, closed when the last of
those issuers is closed: one CA bundle loaded and one connection pool, not one per key) and
one :class:`~rotator.vendors._budget.RateBudget`, so the workers of a pass pace themselves
as one client when the vendor answers 429.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Self
from urllib.parse import urlsplit

import httpx
import tenacity

from rotator import __version__
from rotator.errors import (
    ConfigError,
    Transient,
    VendorAuthError,
    VendorOutcomeUnknown,
    VendorProtocolError,
    VendorUnavailable,
)
from rotator.net import shown, tls_problem
from rotator.secret import Secret
from rotator.vendors._answers import MAX_BODY, Obj, Reply, read_answer
from rotator.vendors._budget import RateBudget
from rotator.vendors._vendor_time import DateOffset

__all__ = ["MAX_BODY", "HTTPIssuer", "Obj", "Reply", "RetryPolicy", "VendorHTTP", "check_base_url"]

LOG = logging.getLogger("rotator.vendors")

# Header values must be visible ASCII: anything else makes the HTTP library raise
# an error whose message quotes the header, i.e. the key.
_SENDABLE = re.compile(r"[!-~]{1,4096}")


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
        raise ConfigError(f"{vendor}: base_url {shown(url)!r} is not an http(s) URL")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"{vendor}: base_url must not carry credentials, a query or a fragment")
    problem = tls_problem(url)  # the rule validate applies too
    if problem:
        raise ConfigError(f"{vendor}: base_url {problem}")
    return url.rstrip("/")


# --------------------------------------------------------------------------- shared per origin

MAX_CONNECTIONS = 64
"""Connections kept to one vendor origin (``--parallel`` is at most 64)."""


class _Origin:
    """What the issuers of one vendor origin share in this process."""

    def __init__(self, url: str) -> None:
        self.users = 0
        self.client: httpx.Client | None = None
        self.budget = RateBudget(url)


_ORIGINS: dict[str, _Origin] = {}
_ORIGINS_LOCK = threading.Lock()


def origin_of(base_url: str) -> str:
    """``scheme://host:port`` of ``base_url``: the unit of sharing (one TLS policy, one limit)."""
    parts = urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or ""
    return f"{parts.scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def _join(origin: str) -> _Origin:
    with _ORIGINS_LOCK:
        shared = _ORIGINS.get(origin)
        if shared is None:
            shared = _ORIGINS[origin] = _Origin(origin)
        shared.users += 1
        return shared


def _leave(origin: str, shared: _Origin) -> None:
    with _ORIGINS_LOCK:
        shared.users -= 1
        if shared.users > 0:
            return
        if _ORIGINS.get(origin) is shared:
            del _ORIGINS[origin]
        client, shared.client = shared.client, None
    if client is not None:
        client.close()


def _client_of(shared: _Origin) -> httpx.Client:
    with _ORIGINS_LOCK:
        if shared.client is None:
            if shared.users <= 0:
                raise RuntimeError("the vendor client is closed")
            shared.client = httpx.Client(
                follow_redirects=False,
                limits=httpx.Limits(
                    max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS
                ),
            )
        return shared.client


def shared_clients() -> dict[str, int]:
    """Origin -> issuers sharing it now, for tests and diagnostics (``{}`` when all are closed)."""
    with _ORIGINS_LOCK:
        return {origin: shared.users for origin, shared in _ORIGINS.items()}


# --------------------------------------------------------------------------- transport


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    credential: Callable[[], Secret]
    params: Mapping[str, str] | None
    body: Mapping[str, Any] | None
    idempotent: bool
    want_data: bool


class VendorHTTP:
    """One vendor's base URL over the process's shared ``httpx.Client`` for its origin, or
    over an injected one (then unpaced unless ``budget`` is given too)."""

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
        budget: RateBudget | None = None,
    ) -> None:
        self.vendor = vendor
        self.base_url = check_base_url(base_url, vendor)
        self._origin = origin_of(self.base_url)
        self._injected = http
        self._shared = _join(self._origin) if http is None else None
        self._budget = budget if budget is not None or self._shared is None else self._shared.budget
        self._timeout = httpx.Timeout(timeout)
        self._policy = retry or RetryPolicy()
        self._sleep = sleep
        self._clock = clock or (lambda: datetime.now(UTC))
        self._vendor_time = DateOffset(self._clock)
        self._backoff = tenacity.wait_exponential(
            multiplier=self._policy.initial, max=self._policy.maximum
        ) + tenacity.wait_random(0, self._policy.initial)

    def close(self) -> None:
        """Let go of the shared client (closed with its last user); idempotent."""
        shared, self._shared = self._shared, None
        if shared is not None:
            _leave(self._origin, shared)

    @property
    def budget(self) -> RateBudget | None:
        """The rate budget this client's requests draw on (shared per origin)."""
        return self._budget

    def _client(self) -> httpx.Client:
        if self._injected is not None:
            return self._injected
        if self._shared is None:
            raise RuntimeError(f"{self.vendor}: the vendor client is closed")
        return _client_of(self._shared)

    def vendor_now(self) -> datetime | None:
        """The vendor's time now: our clock plus the offset its ``Date`` headers showed
        (see :class:`DateOffset`); ``None`` before any answer carried one."""
        return self._vendor_time.now()

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
        limited = False  # the last attempt was answered 429: its wait honoured the pause
        try:
            for attempt in retrying:
                with attempt:
                    try:
                        reply = self._once(call, attempt.retry_state.attempt_number, paused=not limited)
                    except VendorUnavailable as exc:
                        limited = exc.status == 429
                        raise
        except tenacity.RetryError as exc:
            last = exc.last_attempt.exception()
            assert isinstance(last, VendorUnavailable)
            tries = exc.last_attempt.attempt_number
            wait = f"; the vendor asks to wait {last.retry_after:g}s" if last.retry_after else ""
            raise VendorUnavailable(
                f"{last} (gave up after {tries} attempt{'s' if tries > 1 else ''}{wait})",
                status=last.status,
                code=last.code,
                retry_after=last.retry_after,
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
        if asked is not None and self._budget is not None and getattr(exc, "status", None) == 429:
            return asked  # the vendor said how long; the shared budget paces what follows
        return max(backoff, asked or 0.0)

    def _log_wait(self, state: tenacity.RetryCallState) -> None:
        LOG.debug("%s: retry %d in %.2fs", self.vendor, state.attempt_number + 1, state.upcoming_sleep)

    # -- one attempt

    def _once(self, call: _Call, attempt: int, *, paused: bool = True) -> Reply:
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
        http = self._client()
        pace = self._pace(paused)
        try:
            request = http.build_request(
                call.method,
                self.base_url + call.path,
                params=call.params,
                json=call.body,
                headers=headers,
                timeout=self._timeout,
            )
            # Never follow a redirect, even on an injected client: the contract has
            # none, and following one would carry the key to another URL.
            response = http.send(request, stream=True, follow_redirects=False)
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
            raise VendorProtocolError(f"{endpoint}: unreadable answer ({type(exc).__name__})") from exc

        self._vendor_time.learn(response.headers.get("date"))
        answer = read_answer(endpoint, response.status_code, raw, response.headers, self._clock)
        if self._budget is not None:
            if answer.status == 429:
                self._budget.limited(pace, answer.info.retry_after)
            elif answer.status < 500:  # answered: the pace held (a 5xx says nothing of it)
                self._budget.succeeded(pace)
        LOG.debug(
            "%s -> %d request_id=%s attempt=%d",
            endpoint,
            answer.status,
            answer.request_id,
            attempt,
        )
        return answer.reply(want_data=call.want_data)

    def _pace(self, paused: bool) -> int:
        """Wait for this request's slot in the vendor's rate budget; the pace it was given.
        ``paused=False``: this request already waited out its own 429's ``Retry-After``."""
        if self._budget is None:
            return 0
        delay, pace = self._budget.reserve(paused=paused)
        if delay > 0:
            self._sleep(delay)
        return pace


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
