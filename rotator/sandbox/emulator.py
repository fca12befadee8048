"""The sandbox vendor emulator: Adjudon and Adjútor key management over real HTTP.

:class:`Emulator` holds the state of both vendors (thread-safe, usable without
HTTP through :meth:`Emulator.handle`); :class:`EmulatorServer` serves it on
loopback. Adjudon paths (``/health``, ``/api/v1/...``) and Adjútor paths
(``/v2/...``) do not overlap, so one server speaks for both.

Fault knobs (:class:`Faults`) are read on every request and apply before
authentication, as a per-IP limiter or a failing gateway would. ``Faults.rate_limit``
is such a limiter: a token bucket of that many requests per second. Delays are
served after the request took effect and before its answer is written, so a
client that times out has still changed the vendor's state, as with a real one.
"""

from __future__ import annotations

import random
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from rotator.sandbox._adjudon import Adjudon
from rotator.sandbox._adjutor import Adjutor
from rotator.sandbox._common import (
    Request,
    Response,
    adjudon_error,
    adjutor_error,
    digest,
    retry_after_header,
)
from rotator.sandbox._server import HTTPServer

if TYPE_CHECKING:
    import httpx

__all__ = ["Emulator", "EmulatorServer", "Faults", "Response"]

RATE_LIMIT = 600
"""The ``limit`` a random 429 (``rate_429``) reports (requests per minute)."""


@dataclass
class Faults:
    """Knobs to make the vendors slow or failing; change them at any time.

    ``fail_next`` holds statuses answered, in order, to the next requests
    instead of serving them; a 0 in it drops the connection unanswered.
    ``path_delays`` maps a regex searched in ``"METHOD /path"`` to extra seconds.
    ``retry_after`` may be fractional, so tests back off quickly.
    ``rate_limit`` (requests per second, 0: none) is a real limit: a token bucket holding
    ``rate_burst`` requests (0: one second of them); a request that finds it empty is
    answered 429 with the ``Retry-After`` (and ``retry_after_seconds``) until the next
    token, and does not count against it. ``limited`` counts those answers.
    """

    latency: float = 0.0
    error_rate: float = 0.0
    rate_429: float = 0.0
    retry_after: float = 1.0
    path_delays: dict[str, float] = field(default_factory=dict)
    fail_next: list[int] = field(default_factory=list)
    seed: int | None = None
    rate_limit: float = 0.0
    rate_burst: float = 0.0
    limited: int = 0
    _rng: random.Random | None = field(default=None, init=False, repr=False, compare=False)
    _rng_seed: int | None = field(default=None, init=False, repr=False, compare=False)
    _tokens: float | None = field(default=None, init=False, repr=False, compare=False)
    _filled_at: float = field(default=0.0, init=False, repr=False, compare=False)

    def roll(self, share: float) -> bool:
        """True for about ``share`` of calls; repeatable when :attr:`seed` is set."""
        if share <= 0:
            return False
        if self._rng is None or self._rng_seed != self.seed:
            # Not for security: a reproducible sequence of injected faults.
            self._rng, self._rng_seed = random.Random(self.seed), self.seed  # noqa: S311
        return self._rng.random() < share

    def take_token(self, now: float) -> float | None:
        """Spend one of ``rate_limit``'s tokens at ``now`` (monotonic seconds); ``None`` when
        there was one, else the seconds until the next (the request is refused)."""
        if self.rate_limit <= 0:
            return None
        burst = max(1.0, self.rate_burst or self.rate_limit)
        if self._tokens is None:
            self._tokens, self._filled_at = burst, now
        self._tokens = min(burst, self._tokens + (now - self._filled_at) * self.rate_limit)
        self._filled_at = now
        if self._tokens >= 1.0 - 1e-9:  # float steps of 1/rate_limit add up to a token
            self._tokens -= 1.0
            return None
        self.limited += 1
        return (1.0 - self._tokens) / self.rate_limit

    def delay_for(self, method: str, path: str) -> float:
        """Seconds to hold the answer to ``method path``."""
        line = f"{method} {path}"
        extra = sum(d for pattern, d in list(self.path_delays.items()) if re.search(pattern, line))
        return max(0.0, self.latency + extra)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Emulator:
    """Both vendors' state behind one lock. Raw keys are never kept, only SHA-256."""

    def __init__(self, *, clock: Callable[[], datetime] | None = None) -> None:
        self._clock = clock or _utcnow
        self.faults = Faults()
        self._lock = threading.RLock()
        self._adjudon = Adjudon()
        self._adjutor = Adjutor()
        self._log: list[tuple[str, str, int]] = []

    # ------------------------------------------------------------------ set-up and inspection

    def bootstrap_workspace_key(self, name: str = "bootstrap") -> str:
        """Create an active Adjudon workspace key and return its raw value."""
        with self._lock:
            _, raw = self._adjudon.mint("workspace", name, None, self._clock())
        return raw

    def create_agent_key(self, agent_id: str, name: str = "agent") -> str:
        """Create an active Adjudon agent key for ``agent_id`` and return its raw value."""
        with self._lock:
            _, raw = self._adjudon.mint("agent", name, agent_id, self._clock())
        return raw

    def create_app(self, app_id: str, name: str = "app") -> str:
        """Register an Adjútor app with a fresh key and return the raw key."""
        with self._lock:
            return self._adjutor.create_app(app_id, name, self._clock())

    def adjudon_keys(self) -> list[dict[str, Any]]:
        """Every Adjudon key as ``KeyInfo`` (as the API lists it)."""
        with self._lock:
            return self._adjudon.infos()

    def app_info(self, app_id: str) -> dict[str, Any]:
        """The ``AppInfo`` of an Adjútor app; ``KeyError`` if unknown."""
        with self._lock:
            return self._adjutor.apps[app_id].info()

    def key_accepted(self, raw: str) -> bool:
        """Would ``raw`` authenticate now, at either vendor?"""
        key_digest = digest(raw)
        with self._lock:
            return self._adjudon.accepts(key_digest) or self._adjutor.accepts(key_digest)

    def request_log(self) -> list[tuple[str, str, int]]:
        """``(method, path, status)`` of every request served; status 0 = dropped."""
        with self._lock:
            return list(self._log)

    def tamper_trace(self, index: int) -> None:
        """Corrupt chain entry ``index`` (0-based) so a verify covering it reports it."""
        with self._lock:
            self._adjudon.chain.tamper(index)

    # ------------------------------------------------------------------ requests

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes = b"") -> Response:
        """Serve one request (``target`` is the path with its query)."""
        split = urlsplit(target)
        path = split.path or "/"
        adjutor = path == "/v2" or path.startswith("/v2/")
        with self._lock:
            faults = self.faults
            req = Request(
                method=method.upper(),
                path=path,
                query=parse_qs(split.query, keep_blank_values=True),
                headers={k.lower(): v for k, v in headers.items()},
                body=body,
                request_id=f"req_{secrets.token_hex(8)}",
                now=self._clock(),
            )
            delay = faults.delay_for(req.method, path)
            status, retry_after = _fault_status(faults)
            if status is not None:
                limit = round(faults.rate_limit * 60) if faults.rate_limit > 0 else RATE_LIMIT
                response = _fault(req, status, retry_after, adjutor=adjutor, limit=limit)
            elif adjutor:
                response = self._adjutor.handle(req)
            else:
                response = self._adjudon.handle(req)
            if not adjutor:
                response.headers.setdefault("X-Request-Id", req.request_id)
            # the vendor's own clock, which clients learn from (RFC 9110 Date)
            response.headers.setdefault("Date", formatdate(req.now.timestamp(), usegmt=True))
            self._log.append((req.method, path, response.status))
        if delay:
            time.sleep(delay)
        return response

    def transport(self) -> httpx.MockTransport:
        """An httpx transport serving this emulator in-process, without a socket."""
        import httpx  # only callers that want it pay for the import

        def serve(request: httpx.Request) -> httpx.Response:
            response = self.handle(
                request.method,
                request.url.raw_path.decode("ascii"),
                request.headers,
                request.read(),
            )
            if response.status == 0:
                raise httpx.RemoteProtocolError("connection dropped", request=request)
            return httpx.Response(response.status, json=response.body, headers=response.headers)

        return httpx.MockTransport(serve)


def _fault_status(faults: Faults) -> tuple[int | None, float]:
    """The status answered instead of serving the request, if any, and its Retry-After."""
    if faults.fail_next:
        return faults.fail_next.pop(0), faults.retry_after
    wait = faults.take_token(time.monotonic())
    if wait is not None:
        return 429, wait
    if faults.roll(faults.rate_429):
        return 429, faults.retry_after
    if faults.roll(faults.error_rate):
        return 503, faults.retry_after
    return None, faults.retry_after


_ADJUDON_CODES = {
    401: "TOKEN_VERIFICATION_FAILED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    409: "KEY_LIMIT_REACHED",
    422: "VALIDATION_ERROR",
    500: "INTERNAL_ERROR",
}


def _fault(
    req: Request, status: int, retry_after: float, *, adjutor: bool, limit: int = RATE_LIMIT
) -> Response:
    if status == 0:
        return Response(0)
    if status == 429:
        if adjutor:
            response = adjutor_error(429, "Too many requests, slow down")
        else:
            data = {"limit": limit, "remaining": 0, "retry_after_seconds": retry_after}
            response = adjudon_error(req, 429, "RATE_LIMIT_EXCEEDED", "rate limit exceeded", data)
        response.headers["Retry-After"] = retry_after_header(retry_after)
        return response
    code = _ADJUDON_CODES.get(status, "SERVICE_UNAVAILABLE" if status >= 500 else "ERROR")
    message = "service unavailable" if code == "SERVICE_UNAVAILABLE" else "injected fault"
    if adjutor:
        return adjutor_error(status, message.capitalize())
    return adjudon_error(req, status, code, message)


class EmulatorServer:
    """Serves an :class:`Emulator` on ``host:port`` (0: a free port) from a daemon thread.

    After :meth:`stop`, :meth:`start` binds the same port again, so a test can
    take the vendor down and bring it back at the same URL.
    """

    def __init__(self, emulator: Emulator | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.emulator = emulator or Emulator()
        self.url = ""
        self._host, self._port = host, port
        self._server: HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> EmulatorServer:
        """Bind and serve; returns ``self``. Starting a started server does nothing."""
        if self._server is None:
            server = HTTPServer((self._host, self._port), self.emulator.handle)
            self._port = server.server_address[1]
            host = f"[{self._host}]" if ":" in self._host else self._host
            self.url = f"http://{host}:{self._port}"
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="rotator-emulator",
                daemon=True,
            )
            self._server = server
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut every open connection. Idempotent."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.close_connections()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
