"""The sandbox vendor emulator, spoken to over real HTTP as the vendor API contract says."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from rotator.sandbox.emulator import Emulator, EmulatorServer, Faults

T0 = datetime(2026, 11, 22, 5, 0, tzinfo=UTC)
WORKSPACE_RE = re.compile(r"adj_live_[0-9a-f]{64}")
AGENT_RE = re.compile(r"adj_agent_[0-9a-f]{48}")
ADJUTOR_RE = re.compile(r"sk_live_[A-Za-z0-9]{40}")


class Clock:
    """A settable clock; every tick is one millisecond so times differ."""

    def __init__(self) -> None:
        self.now = T0
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            self.now += timedelta(milliseconds=1)
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += timedelta(seconds=seconds)


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server(clock: Clock) -> Iterator[EmulatorServer]:
    with EmulatorServer(Emulator(clock=clock)) as srv:
        yield srv


@pytest.fixture
def emu(server: EmulatorServer) -> Emulator:
    return server.emulator


@pytest.fixture
def http(server: EmulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=5) as client:
        yield client


def bearer(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}


def mint(
    http: httpx.Client, admin: str, type_: str = "agent", agent_id: str | None = "pay", name: str = "k"
) -> httpx.Response:
    body: dict[str, Any] = {"type": type_, "name": name}
    if type_ == "agent":
        body["agent_id"] = agent_id
    return http.post("/api/v1/api-keys", json=body, headers=bearer(admin))


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error", "request_id"}
    assert body["request_id"]
    return str(body["error"]["code"])


def key_id(emu: Emulator, raw: str) -> str:
    (info,) = [k for k in emu.adjudon_keys() if raw.startswith(k["prefix"]) and k["status"] == "active"]
    return str(info["id"])


# ------------------------------------------------------------------------ formats and auth


def test_key_formats_and_lengths(emu: Emulator, http: httpx.Client) -> None:
    """Minted keys, ids and prefixes have the documented shapes and lengths."""
    admin = emu.bootstrap_workspace_key("admin")
    # The vendor's docs say "64 hex, 72 chars"; 9 + 64 is 73, and the 64 hex is what holds.
    assert WORKSPACE_RE.fullmatch(admin) and len(admin) == 73
    created = mint(http, admin)
    assert created.status_code == 201
    data = created.json()["data"]
    assert AGENT_RE.fullmatch(data["key"]) and len(data["key"]) == 58
    assert re.fullmatch(r"key_[0-9a-f]{16}", data["id"])
    assert data["prefix"] == data["key"][:13]
    assert (data["type"], data["agent_id"], data["status"]) == ("agent", "pay", "active")
    assert data["created_at"].endswith("Z") and data["revoked_at"] is None
    second = mint(http, admin, "workspace").json()["data"]
    assert WORKSPACE_RE.fullmatch(second["key"]) and second["agent_id"] is None
    (boot,) = [k for k in emu.adjudon_keys() if k["name"] == "admin"]
    assert boot["prefix"] == admin[:13] and "key" not in boot
    app_key = emu.create_app("app_1", "lending")
    assert ADJUTOR_RE.fullmatch(app_key) and len(app_key) == 48
    assert emu.app_info("app_1")["key_prefix"] == app_key[:12]


def test_both_auth_headers(emu: Emulator, http: httpx.Client) -> None:
    """Adjudon takes the key as a Bearer token or as X-API-Key."""
    admin = emu.bootstrap_workspace_key()
    assert http.get("/health", headers=bearer(admin)).json() == {"status": "ok"}
    assert http.get("/health", headers={"X-API-Key": admin}).json() == {"status": "ok"}
    assert http.get("/api/v1/api-keys", headers={"X-API-Key": admin}).status_code == 200


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "NO_API_KEY"),
        ({"Authorization": "Bearer adj_live_short"}, "INVALID_API_KEY_FORMAT"),
        ({"X-API-Key": "sk_live_" + "a" * 40}, "INVALID_API_KEY_FORMAT"),
        ({"Authorization": "Bearer adj_live_" + "0" * 64}, "INVALID_API_KEY"),
        ({"X-API-Key": "adj_agent_" + "f" * 48}, "INVALID_API_KEY"),
    ],
)
def test_401_codes(emu: Emulator, http: httpx.Client, headers: dict[str, str], code: str) -> None:
    """A missing, malformed or unknown key gets 401 with its own code."""
    emu.bootstrap_workspace_key()
    response = http.get("/api/v1/hash-chain/status", headers=headers)
    assert response.status_code == 401
    assert error_code(response) == code


def test_revoked_key_gets_token_revoked(emu: Emulator, http: httpx.Client) -> None:
    """A revoked key gets 401 TOKEN_REVOKED."""
    admin = emu.bootstrap_workspace_key()
    agent = mint(http, admin).json()["data"]
    assert http.delete(f"/api/v1/api-keys/{agent['id']}", headers=bearer(admin)).status_code == 200
    response = http.post("/api/v1/traces", json={}, headers={"X-API-Key": agent["key"]})
    assert response.status_code == 401
    assert error_code(response) == "TOKEN_REVOKED"
    assert not emu.key_accepted(agent["key"])


def test_agent_key_is_forbidden_on_management(emu: Emulator, http: httpx.Client) -> None:
    """Agent keys ingest and read the chain status, and get 403 on every management call."""
    admin = emu.bootstrap_workspace_key()
    agent = bearer(mint(http, admin).json()["data"]["key"])
    admin_id = key_id(emu, admin)
    for method, path in [
        ("GET", "/api/v1/api-keys"),
        ("POST", "/api/v1/api-keys"),
        ("GET", f"/api/v1/api-keys/{admin_id}"),
        ("DELETE", f"/api/v1/api-keys/{admin_id}"),
        ("GET", f"/api/v1/api-keys/{admin_id}/activity"),
        ("POST", "/api/v1/hash-chain/verify"),
    ]:
        response = http.request(method, path, headers=agent, json={})
        assert response.status_code == 403, (method, path)
        assert error_code(response) == "FORBIDDEN"
    assert http.post("/api/v1/traces", json={"a": 1}, headers=agent).status_code == 201
    assert http.get("/api/v1/hash-chain/status", headers=agent).status_code == 200
    assert emu.key_accepted(admin)


# ------------------------------------------------------------------------ key lifecycle


def test_two_active_keys_per_scope(emu: Emulator, http: httpx.Client) -> None:
    """A third active key in a scope is 409 KEY_LIMIT_REACHED; a revoke frees the slot."""
    admin = emu.bootstrap_workspace_key()
    assert mint(http, admin, "workspace").status_code == 201
    refused = mint(http, admin, "workspace")
    assert refused.status_code == 409
    assert error_code(refused) == "KEY_LIMIT_REACHED"
    assert len(refused.json()["error"]["data"]["active_key_ids"]) == 2
    first = mint(http, admin, agent_id="a").json()["data"]
    assert mint(http, admin, agent_id="a").status_code == 201
    assert mint(http, admin, agent_id="a").status_code == 409
    assert mint(http, admin, agent_id="b").status_code == 201  # another agent is another scope
    http.delete(f"/api/v1/api-keys/{first['id']}", headers=bearer(admin))
    assert mint(http, admin, agent_id="a").status_code == 201
    active = [k for k in emu.adjudon_keys() if k["status"] == "active"]
    assert len(active) == 2 + 2 + 1


def test_key_limit_holds_under_concurrent_mints(emu: Emulator, server: EmulatorServer) -> None:
    """Racing mints in one scope: exactly as many succeed as the 2-key limit leaves room for."""
    admin = emu.bootstrap_workspace_key()
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def race() -> None:
        with httpx.Client(base_url=server.url, timeout=5) as client:
            barrier.wait()
            statuses.append(mint(client, admin, "workspace").status_code)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [201] + [409] * 7
    assert sum(k["status"] == "active" for k in emu.adjudon_keys()) == 2


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[1, 2]",
        b"{}",
        json.dumps({"type": "robot", "name": "x"}).encode(),
        json.dumps({"type": "agent", "name": "x"}).encode(),
        json.dumps({"type": "agent", "agent_id": "p"}).encode(),
        json.dumps({"type": "workspace", "name": "x", "agent_id": "p"}).encode(),
    ],
)
def test_bad_body_is_422(emu: Emulator, http: httpx.Client, content: bytes) -> None:
    """A body that is not a valid key request answers 422 VALIDATION_ERROR and mints nothing."""
    admin = emu.bootstrap_workspace_key()
    response = http.post("/api/v1/api-keys", content=content, headers=bearer(admin))
    assert response.status_code == 422
    assert error_code(response) == "VALIDATION_ERROR"
    assert len(emu.adjudon_keys()) == 1


def test_last_used_and_activity(emu: Emulator, http: httpx.Client, clock: Clock) -> None:
    """Every authenticated request sets last_used_at; activity counts requests since T."""
    admin = emu.bootstrap_workspace_key()
    agent = mint(http, admin).json()["data"]
    activity = f"/api/v1/api-keys/{agent['id']}/activity"
    before = http.get(activity, headers=bearer(admin)).json()["data"]
    assert before == {"key_id": agent["id"], "last_used_at": None, "requests_since": 0}
    clock.advance(60)
    since = clock.now
    for _ in range(3):
        http.post("/api/v1/traces", json={"n": 1}, headers={"X-API-Key": agent["key"]})
    last = clock.now
    http.get("/api/v1/hash-chain/status", headers=bearer(agent["key"]))
    used = clock.now
    clock.advance(60)
    data = http.get(activity, params={"since": iso(since)}, headers=bearer(admin)).json()["data"]
    assert data == {"key_id": agent["id"], "last_used_at": iso(used), "requests_since": 4}
    later = http.get(activity, params={"since": iso(last)}, headers=bearer(admin)).json()["data"]
    assert later["requests_since"] == 2  # since is inclusive: the last trace and the status call
    assert http.get(activity, params={"since": "yesterday"}, headers=bearer(admin)).status_code == 422
    # Management calls count too: the admin key was just used.
    (admin_info,) = [k for k in emu.adjudon_keys() if k["type"] == "workspace"]
    assert admin_info["last_used_at"] == iso(clock.now)


def test_filtered_listing(emu: Emulator, http: httpx.Client) -> None:
    """The key list filters by type and agent_id."""
    admin = emu.bootstrap_workspace_key()
    mint(http, admin, agent_id="a")
    mint(http, admin, agent_id="b")
    listed = http.get(
        "/api/v1/api-keys", params={"type": "agent", "agent_id": "b"}, headers=bearer(admin)
    ).json()["data"]
    assert [(k["type"], k["agent_id"]) for k in listed] == [("agent", "b")]
    workspace = http.get("/api/v1/api-keys", params={"type": "workspace"}, headers=bearer(admin)).json()[
        "data"
    ]
    assert [k["prefix"] for k in workspace] == [admin[:13]]


def test_a_key_may_revoke_itself(emu: Emulator, http: httpx.Client) -> None:
    """The self-revoking request succeeds; the next one with that key gets 401."""
    old = emu.bootstrap_workspace_key()
    new = mint(http, old, "workspace").json()["data"]["key"]
    old_id = key_id(emu, old)
    revoked = http.delete(f"/api/v1/api-keys/{old_id}", headers=bearer(old))
    assert revoked.status_code == 200
    assert revoked.json()["data"]["status"] == "revoked"
    after = http.get("/api/v1/api-keys", headers=bearer(old))
    assert after.status_code == 401
    assert error_code(after) == "TOKEN_REVOKED"
    assert http.get("/api/v1/api-keys", headers=bearer(new)).status_code == 200
    assert not emu.key_accepted(old) and emu.key_accepted(new)


def test_delete_is_idempotent_and_unknown_ids_404(emu: Emulator, http: httpx.Client) -> None:
    """Revoking twice answers the same; an unknown id is 404 KEY_NOT_FOUND everywhere."""
    admin = emu.bootstrap_workspace_key()
    agent = mint(http, admin).json()["data"]
    first = http.delete(f"/api/v1/api-keys/{agent['id']}", headers=bearer(admin))
    again = http.delete(f"/api/v1/api-keys/{agent['id']}", headers=bearer(admin))
    assert first.status_code == again.status_code == 200
    assert first.json()["data"] == again.json()["data"]
    assert first.json()["data"]["revoked_at"] is not None
    for method, path in [
        ("GET", "/api/v1/api-keys/key_0000000000000000"),
        ("DELETE", "/api/v1/api-keys/key_0000000000000000"),
        ("GET", "/api/v1/api-keys/key_0000000000000000/activity"),
    ]:
        response = http.request(method, path, headers=bearer(admin))
        assert response.status_code == 404
        assert error_code(response) == "KEY_NOT_FOUND"
    got = http.get(f"/api/v1/api-keys/{agent['id']}", headers=bearer(admin)).json()["data"]
    assert got["status"] == "revoked"


# ------------------------------------------------------------------------ hash chain


def test_hash_chain_status_verify_and_tamper(emu: Emulator, http: httpx.Client, clock: Clock) -> None:
    """The chain links each trace to the head, counts traces per key and finds a tampered one."""
    admin = emu.bootstrap_workspace_key()
    agent = mint(http, admin).json()["data"]
    empty = http.get("/api/v1/hash-chain/status", headers=bearer(admin)).json()["data"]
    assert empty == {"length": 0, "head": "0" * 64}
    head, times = "0" * 64, []
    senders = [agent["key"], agent["key"], admin]
    for n, raw in enumerate(senders):
        clock.advance(10)
        body = {"n": n, "text": "é"}
        trace_id = http.post("/api/v1/traces", json=body, headers=bearer(raw)).json()["data"]["id"]
        times.append(clock.now)
        payload = json.dumps(
            {"id": trace_id, "key_id": key_id(emu, raw), "received_at": iso(clock.now), "body": body},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        head = hashlib.sha256((head + payload).encode()).hexdigest()
    status = http.get("/api/v1/hash-chain/status", headers=bearer(admin)).json()["data"]
    assert status == {"length": 3, "head": head}

    def verify(**window: str) -> dict[str, Any]:
        response = http.post("/api/v1/hash-chain/verify", json=window, headers=bearer(admin))
        assert response.status_code == 200
        return dict(response.json()["data"])

    assert verify() == {
        "valid": True,
        "checked": 3,
        "first_invalid": None,
        "traces_by_key": {agent["id"]: 2, key_id(emu, admin): 1},
    }
    assert verify(**{"from": iso(times[1])})["traces_by_key"] == {agent["id"]: 1, key_id(emu, admin): 1}
    assert verify(to=iso(times[0]))["checked"] == 1
    emu.tamper_trace(1)
    broken = verify()
    assert (broken["valid"], broken["first_invalid"], broken["checked"]) == (False, 1, 3)
    assert verify(**{"from": iso(times[2])})["valid"] is True  # the window leaves entry 1 out
    with pytest.raises(IndexError):
        emu.tamper_trace(3)


# ------------------------------------------------------------------------ Adjútor


def test_adjutor_reset_revokes_the_old_key_at_once(emu: Emulator, http: httpx.Client) -> None:
    """A reset answers a new key; the calling key is refused from the very next request."""
    old = emu.create_app("app_1", "lending")
    info = http.get("/v2/apps/app_1", headers=bearer(old)).json()
    assert info["status"] == "success"
    assert info["data"] == emu.app_info("app_1")
    assert set(info["data"]) == {"app_id", "name", "key_prefix", "key_created_at", "last_used_at"}
    reset = http.post("/v2/apps/app_1/key/reset", headers=bearer(old))
    assert reset.status_code == 200
    data = reset.json()["data"]
    new = data["api_key"]
    assert ADJUTOR_RE.fullmatch(new) and new != old
    assert data["key_prefix"] == new[:12] and data["app_id"] == "app_1"
    refused = http.get("/v2/apps/app_1", headers=bearer(old))
    assert refused.status_code == 401
    assert refused.json()["status"] == "error" and refused.json()["message"]
    assert http.post("/v2/apps/app_1/key/reset", headers=bearer(old)).status_code == 401
    assert http.get("/v2/apps/app_1", headers=bearer(new)).status_code == 200
    assert emu.key_accepted(new) and not emu.key_accepted(old)


def test_adjutor_auth_and_scope(emu: Emulator, http: httpx.Client) -> None:
    """Adjútor wants a Bearer key of the same app; karma takes any app's key."""
    key_a = emu.create_app("app_a")
    emu.create_app("app_b")
    for headers in ({}, {"X-API-Key": key_a}, bearer("sk_live_short"), bearer("sk_live_" + "Z" * 40)):
        response = http.get("/v2/apps/app_a", headers=headers)
        assert response.status_code == 401
        assert response.json()["status"] == "error"
    forbidden = http.get("/v2/apps/app_b", headers=bearer(key_a))
    assert forbidden.status_code == 403
    assert http.post("/v2/apps/app_b/key/reset", headers=bearer(key_a)).status_code == 403
    assert http.get("/v2/apps/nope", headers=bearer(key_a)).status_code == 404
    assert emu.app_info("app_b")["last_used_at"] is None
    karma = http.get("/v2/verification/karma/jane@example.com", headers=bearer(key_a))
    assert karma.status_code == 200
    assert karma.json()["data"]["karma_identity"] == "jane@example.com"
    assert emu.app_info("app_a")["last_used_at"] is not None
    assert emu.key_accepted(key_a)


# ------------------------------------------------------------------------ faults


def test_429_before_auth_with_retry_after(emu: Emulator, http: httpx.Client) -> None:
    """A rate limit answers before authentication, with Retry-After and the body data."""
    emu.faults.rate_429 = 1.0
    emu.faults.retry_after = 0.25
    response = http.get("/api/v1/api-keys")  # no key at all
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "0.25"
    assert error_code(response) == "RATE_LIMIT_EXCEEDED"
    data = response.json()["error"]["data"]
    assert data["remaining"] == 0 and data["retry_after_seconds"] == 0.25 and data["limit"] > 0
    emu.faults.retry_after = 2
    adjutor = http.get("/v2/apps/app_1")
    assert adjutor.status_code == 429
    assert adjutor.headers["Retry-After"] == "2"
    assert adjutor.json()["status"] == "error"


def test_rate_limit_is_a_token_bucket(emu: Emulator) -> None:
    """rate_limit serves that many requests per second (a second's worth at once), then
    answers 429 with the wait until the next token; refused requests cost nothing."""
    emu.faults.rate_limit = 5.0
    now = [100.0]
    assert emu.faults.take_token(now[0]) is None  # the bucket starts full
    assert all(emu.faults.take_token(now[0]) is None for _ in range(4))
    wait = emu.faults.take_token(now[0])
    assert wait == pytest.approx(0.2)  # one token in 1/5 s
    assert emu.faults.take_token(now[0]) == pytest.approx(0.2)  # refused: nothing spent
    now[0] += 0.1
    assert emu.faults.take_token(now[0]) == pytest.approx(0.1)
    now[0] += 0.1
    assert emu.faults.take_token(now[0]) is None
    now[0] += 60  # refills to one second's worth, not more
    assert [emu.faults.take_token(now[0]) is None for _ in range(6)] == [True] * 5 + [False]
    assert emu.faults.limited == 4
    emu.faults.rate_burst = 2  # a smaller bucket: two at once, then one each 1/5 s
    now[0] += 60
    assert [emu.faults.take_token(now[0]) is None for _ in range(3)] == [True, True, False]


def test_rate_limit_over_http(emu: Emulator, http: httpx.Client) -> None:
    """Past the limit the vendor answers 429 with Retry-After and the limit per minute, before
    authentication; after Retry-After it serves again."""
    admin = bearer(emu.bootstrap_workspace_key())
    emu.faults.rate_limit = 2.0
    statuses = [http.get("/health", headers=admin).status_code for _ in range(4)]
    assert statuses[:2] == [200, 200] and 429 in statuses[2:]
    limited = http.get("/api/v1/api-keys")  # no key at all: the limit comes first
    assert limited.status_code == 429
    wait = float(limited.headers["Retry-After"])
    data = limited.json()["error"]["data"]
    assert (
        0 < wait <= 0.5
        and data["limit"] == 120
        and data["retry_after_seconds"] == pytest.approx(wait, abs=1e-3)
    )
    time.sleep(wait + 0.05)
    assert http.get("/health", headers=admin).status_code == 200
    assert emu.faults.limited == statuses.count(429) + 1


def test_503_bodies(emu: Emulator, http: httpx.Client) -> None:
    """The error rate answers 503 in each vendor's own error body."""
    emu.faults.error_rate = 1.0
    adjudon = http.get("/health")
    assert adjudon.status_code == 503
    assert error_code(adjudon) == "SERVICE_UNAVAILABLE"
    adjutor = http.get("/v2/apps/app_1")
    assert adjutor.status_code == 503
    assert adjutor.json() == {"status": "error", "message": "Service unavailable"}


def test_latency_and_path_delays(emu: Emulator, http: httpx.Client) -> None:
    """Latency slows every request; a path delay slows only the requests it matches."""
    admin = bearer(emu.bootstrap_workspace_key())
    emu.faults.path_delays = {r"^POST /api/v1/traces$": 0.4}
    started = time.monotonic()
    assert http.post("/api/v1/traces", json={}, headers=admin).status_code == 201
    slow = time.monotonic() - started
    started = time.monotonic()
    assert http.get("/health", headers=admin).status_code == 200
    fast = time.monotonic() - started
    assert slow >= 0.4 > fast
    emu.faults = Faults(latency=0.2)
    started = time.monotonic()
    http.get("/health", headers=admin)
    assert time.monotonic() - started >= 0.2


def test_fail_next_in_order(emu: Emulator, http: httpx.Client) -> None:
    """fail_next answers its statuses to the next requests in order; 0 drops the connection."""
    admin = bearer(emu.bootstrap_workspace_key())
    emu.faults.fail_next = [503, 429, 500, 0]
    assert http.get("/health", headers=admin).status_code == 503
    limited = http.get("/health", headers=admin)
    assert limited.status_code == 429 and "Retry-After" in limited.headers
    assert error_code(http.get("/health", headers=admin)) == "INTERNAL_ERROR"
    with pytest.raises(httpx.RemoteProtocolError):
        http.get("/health", headers=admin)
    assert http.get("/health", headers=admin).status_code == 200
    assert [status for _, _, status in emu.request_log()] == [503, 429, 500, 0, 200]


def test_seeded_faults_repeat() -> None:
    """With a seed, share-based faults fall on the same requests every run."""

    def statuses(seed: int) -> list[int]:
        emu = Emulator()
        emu.faults = Faults(error_rate=0.3, rate_429=0.2, seed=seed)
        return [emu.handle("GET", "/health", {}).status for _ in range(40)]

    first = statuses(7)
    assert first == statuses(7)
    assert {401, 429, 503} == set(first)


# ------------------------------------------------------------------------ secrecy and serving


def _strings(obj: object, seen: set[int]) -> Iterator[str]:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(k, seen)
            yield from _strings(v, seen)
    elif isinstance(obj, list | tuple | set):
        for item in obj:
            yield from _strings(item, seen)
    elif dataclasses.is_dataclass(obj) or hasattr(obj, "__dict__"):
        yield from _strings(vars(obj), seen)


def test_no_raw_key_is_kept_or_shown(emu: Emulator, http: httpx.Client) -> None:
    """Raw keys appear in no log, listing or app info, nor anywhere in the emulator's state."""
    admin = emu.bootstrap_workspace_key()
    agent = mint(http, admin).json()["data"]["key"]
    old_app = emu.create_app("app_1")
    new_app = http.post("/v2/apps/app_1/key/reset", headers=bearer(old_app)).json()["data"]["api_key"]
    http.post("/api/v1/traces", json={"ok": True}, headers=bearer(agent))
    raws = [admin, agent, old_app, new_app]
    shown = repr((emu.request_log(), emu.adjudon_keys(), emu.app_info("app_1")))
    assert not any(raw in shown for raw in raws)
    kept = {s for s in _strings(emu, set()) if s.startswith(("adj_", "sk_live_"))}
    assert kept.isdisjoint(raws)
    assert all(emu.key_accepted(raw) for raw in (admin, agent, new_app))


def test_in_process_transport() -> None:
    """The httpx transport serves the same API without a socket, faults included."""
    emu = Emulator()
    app_key = emu.create_app("app_1")
    with httpx.Client(transport=emu.transport(), base_url="http://vendor.test") as client:
        reset = client.post("/v2/apps/app_1/key/reset", headers=bearer(app_key))
        assert reset.status_code == 200
        assert client.get("/v2/apps/app_1", headers=bearer(app_key)).status_code == 401
        emu.faults.fail_next = [0]
        with pytest.raises(httpx.RemoteProtocolError):
            client.get("/v2/apps/app_1", headers=bearer(reset.json()["data"]["api_key"]))
    assert emu.request_log() == [
        ("POST", "/v2/apps/app_1/key/reset", 200),
        ("GET", "/v2/apps/app_1", 401),
        ("GET", "/v2/apps/app_1", 0),
    ]


def test_unknown_route_and_method(emu: Emulator, http: httpx.Client) -> None:
    """Unknown paths are 404 and wrong methods 405, in the vendor's error body."""
    admin = bearer(emu.bootstrap_workspace_key())
    assert http.get("/api/v1/nothing", headers=admin).status_code == 404
    assert http.put("/health", headers=admin).status_code == 405
    assert http.get("/v2/nothing").json()["status"] == "error"


def test_stop_and_restart_on_the_same_url(emu: Emulator, server: EmulatorServer) -> None:
    """A stopped server refuses connections; restarted, it serves the same state at the same URL."""
    admin = bearer(emu.bootstrap_workspace_key())
    url = server.url
    with httpx.Client(base_url=url, timeout=2) as client:
        assert client.get("/health", headers=admin).status_code == 200
        server.stop()
        with pytest.raises(httpx.TransportError):
            client.get("/health", headers=admin)
        server.start()
        assert server.url == url
        assert client.get("/health", headers=admin).status_code == 200
