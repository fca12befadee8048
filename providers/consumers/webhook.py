"""The ``webhook`` consumer: POST a signed JSON event to a URL; a 2xx answer is success.

The event (:func:`event_body`)::

    {"type": "rotator.rolled", "key": "payments", "attempt": "...", "phase": "rotation",
     "key_id": "...", "prefix": "adj_live_1a2b", "fingerprint": "3f5c0e9a41d2",
     "sent_at": "2026-03-01T10:00:00.000000Z"}

never the key's value. Headers: ``X-Rotator-Timestamp`` (unix seconds of this try),
``X-Rotator-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<raw body>" keyed with the secret>``
and ``X-Rotator-Delivery`` (a UUID derived from the consumer, key, attempt and phase: the same
for every try and every pass of one roll, so a receiver can skip a delivery it already acted
on). ``providers/consumers/webhook_verify.py`` is the receiver's check.

Answers: 2xx is success; a redirect is not followed (a failure naming the status); 408, 429,
5xx and connection errors are retried with exponential back-off (``Retry-After`` honoured) up
to ``attempts`` tries, then :class:`~rotator.errors.ConsumerUnavailable`; any other 4xx is a
:class:`~rotator.errors.ConsumerError` at once. A try that gets no answer within ``timeout``
is a :class:`~rotator.errors.ConsumerTimeout` and is not repeated in this pass: the receiver
may be acting on it. ``stop`` ends the roll within a fraction of a second.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from rotator import __version__
from rotator.abc import RollEvent, format_time
from rotator.errors import ConsumerError, ConsumerTimeout, ConsumerUnavailable
from rotator.net import tls_problem

if TYPE_CHECKING:
    from rotator.builtin.consumers import WebhookConsumer

log = logging.getLogger("rotator.consumers")

EVENT_TYPE = "rotator.rolled"
RETRIED = frozenset({408, 429})
MAX_RETRY_AFTER = 60.0
"""A longer ``Retry-After`` ends the roll (unavailable); the next pass tries again."""
_DELIVERY_NS = uuid.UUID("5b0f7c3e-2f4a-4b8e-9a57-6f1c3d2e8a90")


def event_body(event: RollEvent, sent_at: datetime) -> bytes:
    """The JSON body of one roll's delivery (compact, keys in the documented order)."""
    data = {"type": EVENT_TYPE, **event.to_dict(), "sent_at": format_time(sent_at)}
    return json.dumps(data, separators=(",", ":")).encode()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``v1=<hex>``: HMAC-SHA256 of ``"<timestamp>.<body>"`` keyed with ``secret``."""
    signed = str(timestamp).encode() + b"." + body
    return "v1=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def delivery_id(consumer: str, event: RollEvent) -> str:
    """The same for every try of one roll (consumer, key, attempt, phase), in any process."""
    return str(uuid.uuid5(_DELIVERY_NS, "\n".join((consumer, event.key, event.attempt, event.phase))))


@dataclass(frozen=True)
class _Retry:
    problem: str
    retry_after: float | None = None


class WebhookRoll:
    """Delivers each roll to ``url``; see the module docstring."""

    def __init__(
        self,
        name: str,
        url: str,
        secret_env: str,
        *,
        timeout: float,
        attempts: int,
        backoff: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        problem = tls_problem(url)
        if problem:
            raise ConsumerError(name, problem)
        self._name = name
        self.url = url
        self.secret_env = secret_env
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self.backoff_max = backoff_max

    @property
    def name(self) -> str:
        return self._name

    def roll(self, event: RollEvent, *, stop: threading.Event) -> None:
        secret = os.environ.get(self.secret_env)
        if not secret:
            raise ConsumerError(self.name, f"the signing secret's variable ${self.secret_env} is not set")
        body = event_body(event, datetime.now(UTC))
        delivery = delivery_id(self.name, event)
        started = time.monotonic()
        last = _Retry("no try made")
        for n in range(1, self.attempts + 1):
            retry = self._try(body, delivery, secret, stop)
            if retry is None:
                took = time.monotonic() - started
                log.info("%s: answered 2xx in %.1fs (delivery %s)", self.name, took, delivery)
                return
            last = retry
            if n < self.attempts:
                self._back_off(n, retry, stop)
        raise ConsumerUnavailable(self.name, f"{last.problem}, after {self.attempts} tries")

    def _back_off(self, n: int, retry: _Retry, stop: threading.Event) -> None:
        wait = min(self.backoff * 2 ** (n - 1), self.backoff_max)
        if retry.retry_after is not None:
            if retry.retry_after > MAX_RETRY_AFTER:
                problem = f"{retry.problem}; it asks to wait {retry.retry_after:g}s"
                raise ConsumerUnavailable(self.name, problem)
            wait = max(wait, retry.retry_after)
        log.debug("%s: %s; trying again in %.1fs", self.name, retry.problem, wait)
        if stop.wait(wait):
            raise ConsumerError(self.name, "stopped while waiting to deliver again")

    def _try(self, body: bytes, delivery: str, secret: str, stop: threading.Event) -> _Retry | None:
        """One delivery: ``None`` on 2xx, a :class:`_Retry` for what may pass; raises otherwise."""
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"rotator/{__version__}",
            "X-Rotator-Timestamp": str(timestamp),
            "X-Rotator-Signature": sign(secret, timestamp, body),
            "X-Rotator-Delivery": delivery,
        }
        try:
            response = self._send(body, headers, stop)
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
                return _Retry("could not connect (timed out)")
            raise ConsumerTimeout(self.name, f"no answer within {self.timeout:g}s") from None
        except httpx.HTTPError as exc:  # the URL (and a token in its query) stays out of the message
            return _Retry(f"could not deliver ({type(exc).__name__})")
        return self._judge(response)

    def _judge(self, response: httpx.Response) -> _Retry | None:
        status = response.status_code
        if 200 <= status < 300:
            return None
        if 300 <= status < 400:
            raise ConsumerError(self.name, f"answered HTTP {status}; redirects are not followed")
        if status in RETRIED or status >= 500:
            return _Retry(f"answered HTTP {status}", _retry_after(response.headers.get("retry-after")))
        raise ConsumerError(self.name, f"answered HTTP {status}")

    def _send(self, body: bytes, headers: dict[str, str], stop: threading.Event) -> httpx.Response:
        """POST in a worker thread, so that ``stop`` is heard while the receiver takes its time;
        a try abandoned that way ends by itself within ``timeout``."""
        outcome: list[httpx.Response | httpx.HTTPError] = []
        done = threading.Event()

        def post() -> None:
            try:
                with httpx.Client(timeout=self.timeout, follow_redirects=False) as client:
                    outcome.append(client.post(self.url, content=body, headers=headers))
            except httpx.HTTPError as exc:
                outcome.append(exc)
            finally:
                done.set()

        threading.Thread(target=post, name=f"webhook {self.name}", daemon=True).start()
        deadline = time.monotonic() + self.timeout + 5.0  # the client's own timeout comes first
        while not done.wait(0.05):
            if stop.is_set():
                raise ConsumerError(self.name, "stopped while waiting for the hook's answer")
            if time.monotonic() >= deadline:
                raise ConsumerTimeout(self.name, f"no answer within {self.timeout:g}s")
        result = outcome[0]
        if isinstance(result, httpx.HTTPError):
            raise result
        return result


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def make_consumer(spec: WebhookConsumer, *, key: str, base_dir: Path) -> WebhookRoll:
    return WebhookRoll(
        spec.label(),
        spec.url,
        spec.secret.env,
        timeout=spec.timeout.total_seconds(),
        attempts=spec.attempts,
    )
