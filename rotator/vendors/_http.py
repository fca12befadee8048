"""The HTTP transport every vendor client shares.

It owns what the vendor contract asks of all clients on the way out: HTTPS (or
loopback) base URLs, the bearer header, no redirects, a bounded body, bounded retries
of transient failures through tenacity, and the vendor's clock learnt from ``Date``.
What an answer means (a :class:`Reply` or an error kind) is read by
:mod:`rotator.vendors._answers`. Bodies and headers are never logged nor put into an
exception: they may hold a key.
"""

from __future__ import annotations

import logging
import re
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
        self._vendor_time = DateOffset(self._clock)
        self._backoff = tenacity.wait_exponential(
            multiplier=self._policy.initial, max=self._policy.maximum
        ) + tenacity.wait_random(0, self._policy.initial)

    def close(self) -> None:
        if self._owned:
            self._http.close()

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
        return max(backoff, asked or 0.0)

    def _log_wait(self, state: tenacity.RetryCallState) -> None:
        LOG.debug("%s: retry %d in %.2fs", self.vendor, state.attempt_number + 1, state.upcoming_sleep)

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
                call.method,
                self.base_url + call.path,
                params=call.params,
                json=call.body,
                headers=headers,
                timeout=self._timeout,
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
            raise VendorProtocolError(f"{endpoint}: unreadable answer ({type(exc).__name__})") from exc

        self._vendor_time.learn(response.headers.get("date"))
        answer = read_answer(endpoint, response.status_code, raw, response.headers, self._clock)
        LOG.debug(
            "%s -> %d request_id=%s attempt=%d",
            endpoint,
            answer.status,
            answer.request_id,
            attempt,
        )
        return answer.reply(want_data=call.want_data)


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
