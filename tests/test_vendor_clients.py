"""The vendor clients against a fake network (``httpx.MockTransport``).

Each test hands the client a plain function from request to response, so every
answer the contract allows (and many it does not) can be served exactly.
Backoff sleeps are recorded, not slept.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from rotator.abc import VendorKey
from rotator.errors import (
    ConfigError,
    KeyLimitReached,
    VendorAuthError,
    VendorError,
    VendorNotFound,
    VendorProtocolError,
    VendorRejected,
    VendorUnavailable,
)
from rotator.secret import Secret
from rotator.spec import AdjudonIssuerSpec, AdjutorIssuerSpec, FileTarget, KeySpec
from rotator.vendors import (
    AdjudonIssuer,
    AdjutorIssuer,
    RetryPolicy,
    VendorOutcomeUnknown,
    make_issuer,
)
from rotator.vendors._http import VendorHTTP, check_base_url

Handler = Callable[[httpx.Request], httpx.Response]

BASE = "https://api.adjudon.test"
WS_KEY = "adj_live_" + "c4a7" * 16  # canary: must never show up in a message or log
WS_KEY_2 = "adj_live_" + "0123456789abcdef" * 4
AGENT_KEY = "adj_agent_" + "5e" * 24
APP_KEY = "sk_live_" + "Canary" * 6 + "Xy12"
APP_KEY_2 = "sk_live_" + "Q" * 20 + "z9" * 10
T0 = "2026-01-02T03:04:05Z"
FAST = RetryPolicy(attempts=3, initial=0.01, maximum=0.05, max_total=60.0)


class Recorder:
    """A handler wrapper that counts calls and keeps the requests."""

    def __init__(self, *answers: httpx.Response | Exception | Handler) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer) and not isinstance(answer, httpx.Response):
            return answer(request)
        return answer

    @property
    def calls(self) -> int:
        return len(self.requests)


def ok(data: Any, status: int = 200, **extra: Any) -> httpx.Response:
    return httpx.Response(status, json={"data": data, "request_id": "req_ok", **extra})


def err(status: int, code: str, *, data: Any = None, headers: Any = None) -> httpx.Response:
    error: dict[str, Any] = {"code": code, "message": f"{code.lower()} happened"}
    if data is not None:
        error["data"] = data
    return httpx.Response(status, json={"error": error, "request_id": "req_123"}, headers=headers or {})


def key_info(
    key_id: str = "key_1",
    *,
    kind: str = "workspace",
    agent_id: str | None = None,
    prefix: str | None = None,
    status: str = "active",
    **over: Any,
) -> dict[str, Any]:
    info = {
        "id": key_id,
        "type": kind,
        "name": f"rotator-{key_id}",
        "prefix": prefix or (WS_KEY[:13] if kind == "workspace" else AGENT_KEY[:13]),
        "agent_id": agent_id,
        "status": status,
        "created_at": T0,
        "revoked_at": T0 if status == "revoked" else None,
        "last_used_at": None,
    }
    info.update(over)
    return info


def app_info(prefix: str = APP_KEY[:12], **over: Any) -> dict[str, Any]:
    info = {
        "app_id": "app_123",
        "name": "payments",
        "key_prefix": prefix,
        "key_created_at": T0,
        "last_used_at": "2026-01-03T00:00:00Z",
    }
    info.update(over)
    return info


class Sleeps(list[float]):
    """Injected sleep: records each wait instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def adjudon(
    handler: Handler,
    *,
    kind: str = "workspace",
    agent_id: str | None = None,
    retry: RetryPolicy = FAST,
    sleeps: Sleeps | None = None,
    credential: str = WS_KEY,
) -> AdjudonIssuer:
    return AdjudonIssuer(
        "adjudon-prod",
        BASE,
        kind=kind,
        agent_id=agent_id,  # type: ignore[arg-type]
        credential=lambda: Secret(credential),
        http=httpx.Client(transport=httpx.MockTransport(handler)),
        retry=retry,
        sleep=sleeps if sleeps is not None else Sleeps(),
    )


def adjutor(handler: Handler, *, retry: RetryPolicy = FAST, sleeps: Sleeps | None = None) -> AdjutorIssuer:
    return AdjutorIssuer(
        "lendsqr",
        "https://adjutor.test",
        app_id="app_123",
        credential=lambda: Secret(APP_KEY),
        http=httpx.Client(transport=httpx.MockTransport(handler)),
        retry=retry,
        sleep=sleeps if sleeps is not None else Sleeps(),
    )


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    yield caplog
    for record in caplog.records:
        text = record.getMessage() + repr(record.args)
        for raw in (WS_KEY, WS_KEY_2, AGENT_KEY, APP_KEY, APP_KEY_2):
            assert raw not in text, f"a raw key reached the log via {record.name}"


# --------------------------------------------------------------------------- happy paths


def test_list_keys_workspace_scope() -> None:
    """A workspace issuer asks for workspace keys and drops anything of another scope."""
    rec = Recorder(
        ok(
            [
                key_info("k1"),
                key_info("k2", status="revoked"),
                key_info("a1", kind="agent", agent_id="payments"),
            ]
        )
    )
    keys = adjudon(rec).list_keys()
    assert [(k.id, k.status) for k in keys] == [("k1", "active"), ("k2", "revoked")]
    request = rec.requests[0]
    assert request.url.path == "/api/v1/api-keys"
    assert dict(request.url.params) == {"type": "workspace"}
    assert request.headers["authorization"] == f"Bearer {WS_KEY}"


def test_list_keys_agent_scope() -> None:
    """An agent issuer asks for its agent_id and drops keys of other agents."""
    rec = Recorder(
        ok(
            [
                key_info("a1", kind="agent", agent_id="payments"),
                key_info("a2", kind="agent", agent_id="billing"),
            ]
        )
    )
    issuer = adjudon(rec, kind="agent", agent_id="payments")
    assert [k.id for k in issuer.list_keys()] == ["a1"]
    assert dict(rec.requests[0].url.params) == {"type": "agent", "agent_id": "payments"}
    assert issuer.name == "adjudon-prod/agent:payments"
    assert issuer.capabilities.max_active == 2
    assert issuer.capabilities.prefix_len == 13


def test_credential_is_read_for_every_request() -> None:
    """Switching the management key between calls takes effect on the next request."""
    current = [WS_KEY]
    rec = Recorder(ok([]))
    issuer = AdjudonIssuer(
        "adjudon-prod",
        BASE,
        kind="workspace",
        credential=lambda: Secret(current[0]),
        http=httpx.Client(transport=httpx.MockTransport(rec)),
    )
    issuer.list_keys()
    current[0] = WS_KEY_2
    issuer.list_keys()
    assert [r.headers["authorization"] for r in rec.requests] == [f"Bearer {WS_KEY}", f"Bearer {WS_KEY_2}"]


def test_mint_workspace_key() -> None:
    """A minted key comes back with its listing and a masked value of the right format."""
    rec = Recorder(ok({**key_info("k9", prefix=WS_KEY_2[:13]), "key": WS_KEY_2}, status=201))
    minted = adjudon(rec).mint("rotator-attempt-1")
    assert minted.key.id == "k9"
    assert minted.value == Secret(WS_KEY_2)
    assert WS_KEY_2 not in repr(minted)
    assert json.loads(rec.requests[0].content) == {"type": "workspace", "name": "rotator-attempt-1"}


def test_mint_agent_key_sends_scope() -> None:
    """An agent mint names the agent_id in the body."""
    info = {**key_info("a9", kind="agent", agent_id="payments"), "key": AGENT_KEY}
    rec = Recorder(ok(info, status=201))
    minted = adjudon(rec, kind="agent", agent_id="payments").mint("n")
    assert minted.key.prefix == AGENT_KEY[:13]
    assert json.loads(rec.requests[0].content) == {"type": "agent", "name": "n", "agent_id": "payments"}


def test_activity_revoke_and_chain() -> None:
    """activity, revoke, chain_status and verify_chain parse what the contract promises."""
    since = datetime(2026, 1, 2, tzinfo=UTC)

    def handler(request: httpx.Request) -> httpx.Response:
        route = (request.method, request.url.raw_path.decode().partition("?")[0])
        if route == ("GET", "/api/v1/api-keys/k%2F1/activity"):
            assert request.url.params["since"].startswith("2026-01-02T00:00:00")
            return ok({"key_id": "k/1", "last_used_at": T0, "requests_since": 7})
        if route == ("DELETE", "/api/v1/api-keys/k%2F1"):
            return ok(key_info("k/1", status="revoked"))
        if route == ("GET", "/api/v1/hash-chain/status"):
            return ok({"length": 12, "head": "ab" * 32})
        assert route == ("POST", "/api/v1/hash-chain/verify")
        assert json.loads(request.content) == {"from": "2026-01-02T00:00:00.000000Z"}
        return ok({"valid": False, "checked": 12, "first_invalid": 4, "traces_by_key": {"k/1": 9}})

    issuer = adjudon(handler)
    act = issuer.activity("k/1", since)
    assert (act.last_used_at, act.requests_since) == (datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), 7)
    assert issuer.revoke("k/1").status == "revoked"
    assert issuer.chain_status().length == 12
    report = issuer.verify_chain(since)
    assert (report.valid, report.checked, report.first_invalid) == (False, 12, 4)
    assert dict(report.traces_by_key) == {"k/1": 9}


def test_probe_uses_the_probed_value() -> None:
    """probe sends the value under test: 200 is True, 401 and 403 are False."""
    rec = Recorder(
        httpx.Response(200, json={"status": "ok"}), err(401, "INVALID_API_KEY"), err(403, "FORBIDDEN")
    )
    issuer = adjudon(rec)
    assert [issuer.probe(Secret(AGENT_KEY)) for _ in range(3)] == [True, False, False]
    assert rec.requests[0].url.path == "/health"
    assert rec.requests[0].headers["authorization"] == f"Bearer {AGENT_KEY}"


def test_probe_raises_on_transient_after_retries() -> None:
    """A vendor that stays unavailable makes probe raise, not answer False."""
    rec = Recorder(err(503, "SERVICE_UNAVAILABLE"))
    with pytest.raises(VendorUnavailable):
        adjudon(rec).probe(Secret(WS_KEY))
    assert rec.calls == FAST.attempts


def test_matches_by_prefix_and_format() -> None:
    """matches needs the scope's format and the key's prefix."""
    issuer = adjudon(Recorder(ok([])))
    listed = key_info("k1", prefix=WS_KEY[:13])
    key = VendorKey(
        id="k1",
        prefix=listed["prefix"],
        name="n",
        status="active",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert issuer.matches(Secret(WS_KEY), key)
    assert not issuer.matches(Secret(WS_KEY_2), key)
    assert not issuer.matches(Secret(WS_KEY[:13] + "x" * 59), key)


# --------------------------------------------------------------------------- error kinds


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (401, "INVALID_API_KEY", VendorAuthError),
        (401, "TOKEN_REVOKED", VendorAuthError),
        (403, "FORBIDDEN", VendorAuthError),
        (404, "KEY_NOT_FOUND", VendorNotFound),
        (409, "KEY_LIMIT_REACHED", KeyLimitReached),
        (409, "CONFLICT", VendorRejected),
        (422, "VALIDATION_ERROR", VendorRejected),
        (400, "BAD_REQUEST", VendorRejected),
    ],
)
def test_error_kinds_by_status_and_code(status: int, code: str, kind: type[VendorError]) -> None:
    """Each final status maps to its error kind, once, with code and request id."""
    rec = Recorder(err(status, code))
    with pytest.raises(kind) as info:
        adjudon(rec).mint("n")
    assert type(info.value) is kind
    assert (info.value.status, info.value.code) == (status, code)
    assert code in str(info.value)
    assert "req_123" in str(info.value)
    assert "POST /api/v1/api-keys" in str(info.value)
    assert rec.calls == 1


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_transient_statuses_are_retried(status: int) -> None:
    """429 and 5xx are retried, and the next success is returned."""
    rec = Recorder(err(status, "SERVICE_UNAVAILABLE"), ok([key_info()]))
    sleeps = Sleeps()
    assert len(adjudon(rec, sleeps=sleeps).list_keys()) == 1
    assert rec.calls == 2
    assert len(sleeps) == 1


def test_retry_after_header_seconds_is_honoured() -> None:
    """A Retry-After of 7 s makes the wait at least 7 s, longer than the backoff."""
    rec = Recorder(err(429, "RATE_LIMIT_EXCEEDED", headers={"Retry-After": "7"}), ok([]))
    sleeps = Sleeps()
    adjudon(rec, sleeps=sleeps).list_keys()
    assert sleeps == [7.0]


def test_retry_after_http_date_is_honoured() -> None:
    """A Retry-After given as an HTTP date waits until that date."""
    now = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
    when = format_datetime(now + timedelta(seconds=42), usegmt=True)
    rec = Recorder(err(503, "SERVICE_UNAVAILABLE", headers={"Retry-After": when}), ok([]))
    sleeps = Sleeps()
    http = VendorHTTP(
        "v",
        BASE,
        http=httpx.Client(transport=httpx.MockTransport(rec)),
        retry=FAST,
        sleep=sleeps,
        clock=lambda: now,
    )
    http.call("GET", "/api/v1/api-keys", credential=lambda: Secret(WS_KEY))
    assert sleeps == [42.0]


def test_retry_after_seconds_in_body_is_honoured() -> None:
    """Adjudon's data.retry_after_seconds counts when the header is absent."""
    answer = err(429, "RATE_LIMIT_EXCEEDED", data={"limit": 60, "remaining": 0, "retry_after_seconds": 3.5})
    rec = Recorder(answer, ok([]))
    sleeps = Sleeps()
    adjudon(rec, sleeps=sleeps).list_keys()
    assert sleeps == [3.5]


def test_backoff_grows_is_capped_and_gives_up() -> None:
    """Waits double from ``initial``, stop at ``maximum``, and the last error is raised."""
    policy = RetryPolicy(attempts=5, initial=1.0, maximum=3.0, max_total=100.0)
    rec = Recorder(err(503, "SERVICE_UNAVAILABLE"))
    sleeps = Sleeps()
    with pytest.raises(VendorUnavailable) as info:
        adjudon(rec, retry=policy, sleeps=sleeps).list_keys()
    assert rec.calls == 5
    assert len(sleeps) == 4
    assert 1.0 <= sleeps[0] <= 2.0
    assert 2.0 <= sleeps[1] <= 3.0
    assert sleeps[2:] == [3.0, 3.0]
    assert "gave up after 5 attempts" in str(info.value)
    assert info.value.status == 503


def test_max_total_bounds_waiting() -> None:
    """A Retry-After beyond max_total ends the retries at once, keeping the hint."""
    rec = Recorder(err(429, "RATE_LIMIT_EXCEEDED", headers={"Retry-After": "3600"}))
    sleeps = Sleeps()
    with pytest.raises(VendorUnavailable) as info:
        adjudon(rec, sleeps=sleeps).list_keys()
    assert rec.calls == 1
    assert sleeps == []
    assert info.value.retry_after == 3600.0


def test_transport_errors_are_retried_for_reads() -> None:
    """A read timeout on a GET is retried; a vendor that stays down ends in VendorUnavailable."""
    url = httpx.Request("GET", BASE)
    rec = Recorder(httpx.ReadTimeout("timed out", request=url), ok([]))
    assert adjudon(rec).list_keys() == []
    assert rec.calls == 2
    down = Recorder(httpx.ConnectError("refused", request=url))
    with pytest.raises(VendorUnavailable, match="ConnectError"):
        adjudon(down).list_keys()
    assert down.calls == FAST.attempts


@pytest.mark.parametrize(
    "failure", [httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteTimeout]
)
def test_mint_is_not_repeated_after_it_may_have_arrived(failure: type[httpx.HTTPError]) -> None:
    """A POST that failed after sending is reported once, never sent again."""
    rec = Recorder(
        failure("lost", request=httpx.Request("POST", BASE)),  # type: ignore[call-arg]
        ok({**key_info(), "key": WS_KEY}, status=201),
    )
    sleeps = Sleeps()
    with pytest.raises(VendorOutcomeUnknown):
        adjudon(rec, sleeps=sleeps).mint("n")
    assert rec.calls == 1
    assert sleeps == []


def test_mint_is_retried_when_it_never_left() -> None:
    """A connection refused before sending, then a 503, are both safe to retry for a POST."""
    rec = Recorder(
        httpx.ConnectError("refused", request=httpx.Request("POST", BASE)),
        err(503, "SERVICE_UNAVAILABLE"),
        ok({**key_info(), "key": WS_KEY}, status=201),
    )
    assert adjudon(rec).mint("n").key.id == "key_1"
    assert rec.calls == 3


def test_verify_chain_post_is_retried_on_timeout() -> None:
    """The read-only verify POST is retried after a read timeout."""
    rec = Recorder(
        httpx.ReadTimeout("slow", request=httpx.Request("POST", BASE)),
        ok({"valid": True, "checked": 0, "first_invalid": None, "traces_by_key": {}}),
    )
    assert adjudon(rec).verify_chain().valid
    assert rec.calls == 2


# --------------------------------------------------------------------------- garbage


def _chunks() -> Iterator[bytes]:
    """A valid 2 MiB answer without a Content-Length (chunked)."""
    yield b'{"data": [], "pad": "'
    for _ in range(2048):
        yield b"x" * 1024
    yield b'"}'


GARBAGE = {
    "html page": httpx.Response(200, text=f"<html><body>Bad gateway {WS_KEY}</body></html>"),
    "truncated json": httpx.Response(200, text='{"data": [{"id": "k1", "prefix": "' + WS_KEY),
    "2 MiB with length": httpx.Response(200, json={"data": [], "pad": "x" * (2 << 20), "leak": WS_KEY}),
    "2 MiB chunked": httpx.Response(200, content=_chunks()),
    "no data": httpx.Response(200, json={"result": [], "leak": WS_KEY}),
    "top-level list": httpx.Response(200, json=[{"data": []}]),
    "data not a list": httpx.Response(200, json={"data": {"id": "k1"}}),
    "wrong field type": ok([key_info(created_at=1700000000)]),
    "bad time": ok([key_info(created_at=f"yesterday {WS_KEY}")]),
    "unknown status": ok([key_info(status="zombie")]),
    "non-utf8": httpx.Response(200, content=b'{"data": "\xff\xfe"}'),
}


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_garbage_answers_are_protocol_errors(name: str, records: pytest.LogCaptureFixture) -> None:
    """Each malformed 200 is one VendorProtocolError naming the endpoint, not the body."""
    rec = Recorder(GARBAGE[name])
    with pytest.raises(VendorProtocolError) as info:
        adjudon(rec).list_keys()
    message = str(info.value)
    assert "GET /api/v1/api-keys" in message
    assert "HTTP 200" in message
    assert WS_KEY not in message
    assert "xxxxxxxx" not in message
    assert rec.calls == 1


def test_oversized_stream_is_not_read_to_the_end() -> None:
    """A chunked answer stops being read just past 1 MiB."""
    served = [0]

    def endless() -> Iterator[bytes]:
        yield b'{"data": [], "pad": "'
        while True:
            served[0] += 1
            yield b"x" * 1024

    with pytest.raises(VendorProtocolError, match="larger than"):
        adjudon(Recorder(httpx.Response(200, content=endless()))).list_keys()
    assert 1024 <= served[0] <= 1030


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("no key", key_info("k7")),
        ("agent value for workspace", {**key_info("k7"), "key": AGENT_KEY}),
        ("uppercase hex", {**key_info("k7", prefix=WS_KEY.upper()[:13]), "key": WS_KEY.upper()}),
        ("prefix mismatch", {**key_info("k7", prefix="adj_live_ffff"), "key": WS_KEY}),
        ("other scope", {**key_info("k7", kind="agent", agent_id="x"), "key": AGENT_KEY}),
        ("key not a string", {**key_info("k7"), "key": 12345}),
    ],
)
def test_bad_minted_keys_are_refused(
    name: str, data: dict[str, Any], records: pytest.LogCaptureFixture
) -> None:
    """A minted key of the wrong format or prefix is refused, naming its id only."""
    rec = Recorder(ok(data, status=201))
    with pytest.raises(VendorProtocolError) as info:
        adjudon(rec).mint("n")
    message = str(info.value)
    assert "k7" in message
    assert WS_KEY not in message
    assert WS_KEY.upper() not in message
    assert AGENT_KEY not in message


@pytest.mark.parametrize(
    ("status", "kind"), [(502, VendorUnavailable), (401, VendorAuthError), (404, VendorNotFound)]
)
def test_error_statuses_with_garbage_bodies_keep_their_kind(status: int, kind: type[VendorError]) -> None:
    """An HTML error page from a proxy is still translated by its status."""
    rec = Recorder(httpx.Response(status, text="<html>proxy error</html>"))
    with pytest.raises(kind) as info:
        adjudon(rec, retry=RetryPolicy(attempts=1)).list_keys()
    assert info.value.status == status
    assert "proxy" not in str(info.value)


def test_redirects_are_not_followed() -> None:
    """A 3xx is outside the contract: a protocol error, and the bearer goes nowhere else."""
    rec = Recorder(httpx.Response(302, headers={"Location": "https://evil.test/"}), ok([]))
    issuer = AdjudonIssuer(
        "adjudon-prod",
        BASE,
        kind="workspace",
        credential=lambda: Secret(WS_KEY),
        http=httpx.Client(transport=httpx.MockTransport(rec), follow_redirects=True),
    )
    with pytest.raises(VendorProtocolError):
        issuer.list_keys()
    assert rec.calls == 1


# --------------------------------------------------------------------------- transport rules


@pytest.mark.parametrize(
    "url",
    [
        "http://api.adjudon.com",
        "http://10.0.0.1:8080",
        "ftp://127.0.0.1",
        "http://127.0.0.1.evil.test",
        "https://",
        "https://user:pw@api.adjudon.com",
    ],
)
def test_unsafe_base_urls_are_refused(url: str) -> None:
    """Plain http is refused unless loopback; credentials in the URL too."""
    with pytest.raises(ConfigError):
        check_base_url(url, "adjudon-prod")
    with pytest.raises(ConfigError):
        AdjudonIssuer("adjudon-prod", url, kind="workspace", credential=lambda: Secret(WS_KEY))


@pytest.mark.parametrize(
    "url",
    [
        "https://api.adjudon.com/",
        "http://127.0.0.1:8080",
        "http://127.9.9.9",
        "http://[::1]:9000",
        "http://localhost:1234",
    ],
)
def test_https_and_loopback_http_are_allowed(url: str) -> None:
    """HTTPS anywhere and plain http to loopback are accepted."""
    assert check_base_url(url, "adjudon-prod") == url.rstrip("/")


def test_malformed_credential_is_never_sent(records: pytest.LogCaptureFixture) -> None:
    """A credential that cannot be a header is refused before any request, by fingerprint."""
    rec = Recorder(ok([]))
    broken = WS_KEY + "\n"
    with pytest.raises(VendorAuthError) as info:
        adjudon(rec, credential=broken).list_keys()
    assert rec.calls == 0
    assert WS_KEY not in str(info.value)
    assert Secret(broken).fingerprint in str(info.value)


def test_no_key_reaches_messages_or_logs(records: pytest.LogCaptureFixture) -> None:
    """Vendor messages that echo a key are scrubbed; DEBUG logs name method, path, status."""
    echo = {
        "error": {"code": "INVALID_API_KEY", "message": f"key {WS_KEY} is unknown"},
        "request_id": "req_echo",
    }
    rec = Recorder(err(503, "SERVICE_UNAVAILABLE"), httpx.Response(401, json=echo))
    with pytest.raises(VendorAuthError) as info:
        adjudon(rec).list_keys()
    assert WS_KEY not in str(info.value)
    assert "req_echo" in str(info.value)
    messages = [r.getMessage() for r in records.records if r.name == "rotator.vendors"]
    assert any("GET /api/v1/api-keys -> 503" in m and "attempt=1" in m for m in messages)
    assert any("-> 401 request_id=req_echo attempt=2" in m for m in messages)


# --------------------------------------------------------------------------- Adjútor


def test_adjutor_lists_the_app_key() -> None:
    """The app's one key is listed as <app_id>@<prefix>, active."""
    rec = Recorder(httpx.Response(200, json={"status": "success", "message": "ok", "data": app_info()}))
    issuer = adjutor(rec)
    [key] = issuer.list_keys()
    assert (key.id, key.prefix, key.status) == (f"app_123@{APP_KEY[:12]}", APP_KEY[:12], "active")
    assert rec.requests[0].url.path == "/v2/apps/app_123"
    assert rec.requests[0].headers["authorization"] == f"Bearer {APP_KEY}"
    assert issuer.capabilities.overlap is False
    assert issuer.name == "lendsqr/app:app_123"


def test_adjutor_reset_is_authenticated_by_current(records: pytest.LogCaptureFixture) -> None:
    """A reset sends the current key and returns the new one, checked."""
    data = {**app_info(prefix=APP_KEY_2[:12]), "api_key": APP_KEY_2}
    rec = Recorder(httpx.Response(200, json={"status": "success", "message": "ok", "data": data}))
    minted = adjutor(rec).mint("ignored", current=Secret(APP_KEY))
    assert minted.value == Secret(APP_KEY_2)
    assert minted.key.id == f"app_123@{APP_KEY_2[:12]}"
    request = rec.requests[0]
    assert (request.method, request.url.path) == ("POST", "/v2/apps/app_123/key/reset")
    assert request.headers["authorization"] == f"Bearer {APP_KEY}"


def test_adjutor_reset_needs_current() -> None:
    """Without the current key no reset is sent."""
    rec = Recorder(httpx.Response(500))
    with pytest.raises(VendorRejected):
        adjutor(rec).mint("n")
    assert rec.calls == 0


@pytest.mark.parametrize(
    "data",
    [
        {**app_info(prefix=APP_KEY_2[:12]), "api_key": APP_KEY_2[:-1] + "!"},
        {**app_info(prefix="sk_live_zzzz"), "api_key": APP_KEY_2},
        app_info(prefix=APP_KEY_2[:12]),
        {**app_info(prefix=APP_KEY_2[:12]), "api_key": APP_KEY_2 + "x"},
    ],
)
def test_adjutor_bad_reset_keys_are_refused(data: dict[str, Any], records: pytest.LogCaptureFixture) -> None:
    """A reset answer with a malformed or mismatched key is refused without echoing it."""
    rec = Recorder(httpx.Response(200, json={"status": "success", "data": data}))
    with pytest.raises(VendorProtocolError) as info:
        adjutor(rec).mint("n", current=Secret(APP_KEY))
    assert APP_KEY_2[8:] not in str(info.value)
    assert "app_123@" in str(info.value)


def test_adjutor_reset_not_repeated_after_timeout() -> None:
    """A reset whose answer was lost is not sent again: it may have revoked the key."""
    rec = Recorder(httpx.ReadTimeout("slow", request=httpx.Request("POST", BASE)))
    with pytest.raises(VendorOutcomeUnknown):
        adjutor(rec).mint("n", current=Secret(APP_KEY))
    assert rec.calls == 1


def test_adjutor_revoke_only_by_reset() -> None:
    """Revoking the current key is refused; a key reset away is reported revoked."""
    rec = Recorder(httpx.Response(200, json={"status": "success", "data": app_info()}))
    issuer = adjutor(rec)
    with pytest.raises(VendorRejected, match="only by reset"):
        issuer.revoke(f"app_123@{APP_KEY[:12]}")
    old = issuer.revoke("app_123@sk_live_OLD0")
    assert (old.status, old.prefix) == ("revoked", "sk_live_OLD0")
    with pytest.raises(VendorNotFound):
        issuer.revoke("other_app@sk_live_OLD0")
    assert [r.method for r in rec.requests] == ["GET", "GET"]


def test_adjutor_activity_and_probe() -> None:
    """Activity is the app's last_used_at; probe is True on 200 and False on 401."""
    errors = {"status": "error", "message": f"invalid key {APP_KEY_2}"}
    rec = Recorder(
        httpx.Response(200, json={"status": "success", "data": app_info()}),
        httpx.Response(200, json={"status": "success", "data": app_info()}),
        httpx.Response(401, json=errors),
    )
    issuer = adjutor(rec)
    act = issuer.activity(f"app_123@{APP_KEY[:12]}")
    assert act.last_used_at == datetime(2026, 1, 3, tzinfo=UTC)
    assert issuer.probe(Secret(APP_KEY_2))
    assert not issuer.probe(Secret(APP_KEY_2))
    assert rec.requests[1].headers["authorization"] == f"Bearer {APP_KEY_2}"


def test_adjutor_error_body_is_translated() -> None:
    """Adjútor's {"status":"error"} answers keep their kind and a scrubbed message."""
    body = {"status": "error", "message": f"App not found for {APP_KEY}"}
    rec = Recorder(httpx.Response(404, json=body))
    with pytest.raises(VendorNotFound) as info:
        adjutor(rec).list_keys()
    assert "App not found" in str(info.value)
    assert APP_KEY not in str(info.value)


def test_adjutor_error_status_in_200_is_protocol_error() -> None:
    """A 200 whose status says error breaks the contract."""
    rec = Recorder(httpx.Response(200, json={"status": "error", "data": app_info()}))
    with pytest.raises(VendorProtocolError):
        adjutor(rec).list_keys()


# --------------------------------------------------------------------------- make_issuer


def test_make_issuer_binds_scopes() -> None:
    """make_issuer picks the client and scope from the issuer and key specs."""
    adj = AdjudonIssuerSpec(type="adjudon", base_url=BASE, credential={"env": "X"})  # type: ignore[arg-type]
    ws = make_issuer(
        adj,
        KeySpec(issuer="adjudon-prod", targets=[FileTarget(type="file", path="a")]),  # type: ignore[list-item]
        credential=lambda: Secret(WS_KEY),
    )
    agent = make_issuer(
        adj,
        KeySpec(
            issuer="adjudon-prod",
            kind="agent",
            agent_id="payments",
            targets=[FileTarget(type="file", path="a")],
        ),  # type: ignore[list-item]
        credential=lambda: Secret(WS_KEY),
    )
    app = make_issuer(
        AdjutorIssuerSpec(type="adjutor", base_url="https://adjutor.test", app_id="app_1"),
        KeySpec(issuer="lendsqr", targets=[FileTarget(type="file", path="a")]),  # type: ignore[list-item]
        credential=lambda: Secret(APP_KEY),
    )
    assert [i.name for i in (ws, agent, app)] == [
        "adjudon-prod/workspace",
        "adjudon-prod/agent:payments",
        "lendsqr/app:app_1",
    ]
    assert [i.capabilities.max_active for i in (ws, agent, app)] == [2, 2, 1]
    with pytest.raises(ConfigError):
        # validate refuses it already; the client checks again for specs built in code
        make_issuer(
            AdjudonIssuerSpec(type="adjudon", credential={"env": "X"}).model_copy(  # type: ignore[arg-type]
                update={"base_url": "http://api.adjudon.com"}
            ),
            KeySpec(issuer="a", targets=[FileTarget(type="file", path="a")]),  # type: ignore[list-item]
            credential=lambda: Secret(WS_KEY),
        )
