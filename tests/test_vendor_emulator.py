"""The vendor clients over real HTTP against the sandbox emulator.

Each test gets a fresh emulator on a free loopback port. The clients are the
production ones; only the retry policy is shortened and backoff sleeps are
recorded instead of slept.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from rotator.errors import (
    KeyLimitReached,
    VendorAuthError,
    VendorNotFound,
    VendorRejected,
    VendorUnavailable,
)
from rotator.sandbox.emulator import EmulatorServer
from rotator.secret import Secret
from rotator.vendors import AdjudonIssuer, AdjutorIssuer, RetryPolicy, VendorOutcomeUnknown

FAST = RetryPolicy(attempts=3, initial=0.01, maximum=0.05, max_total=10.0)


class Sleeps(list[float]):
    """Injected sleep: records each wait instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


class Cred:
    """A switchable credential, as the engine switches the management key."""

    def __init__(self, raw: str) -> None:
        self.raw = raw

    def __call__(self) -> Secret:
        return Secret(self.raw)


@pytest.fixture
def server() -> Iterator[EmulatorServer]:
    with EmulatorServer() as srv:
        yield srv


def adjudon(
    server: EmulatorServer,
    cred: Cred,
    *,
    agent_id: str | None = None,
    sleeps: Sleeps | None = None,
    timeout: float = 5.0,
) -> AdjudonIssuer:
    return AdjudonIssuer(
        "adjudon-sandbox",
        server.url,
        kind="agent" if agent_id else "workspace",
        agent_id=agent_id,
        credential=cred,
        timeout=timeout,
        retry=FAST,
        sleep=sleeps if sleeps is not None else Sleeps(),
    )


def adjutor(server: EmulatorServer, cred: Cred) -> AdjutorIssuer:
    return AdjutorIssuer("lendsqr", server.url, app_id="app_123", credential=cred, retry=FAST, sleep=Sleeps())


def ingest(server: EmulatorServer, raw: str, n: int = 1) -> None:
    """Consumer traffic: ``n`` traces sent with ``raw``."""
    for _ in range(n):
        answer = httpx.post(
            f"{server.url}/api/v1/traces", json={"span": "x"}, headers={"Authorization": f"Bearer {raw}"}
        )
        assert answer.status_code == 201


def test_workspace_key_lifecycle(server: EmulatorServer, caplog: pytest.LogCaptureFixture) -> None:
    """Mint a second workspace key, switch to it, revoke the first; no key is logged."""
    caplog.set_level(logging.DEBUG)
    emu = server.emulator
    first = emu.bootstrap_workspace_key()
    cred = Cred(first)
    with adjudon(server, cred) as issuer:
        [old] = issuer.list_keys()
        assert issuer.matches(Secret(first), old)
        minted = issuer.mint("rotator-attempt-1")
        second = minted.value.reveal()
        assert emu.key_accepted(second)
        assert minted.key.prefix == second[:13]
        with pytest.raises(KeyLimitReached) as info:
            issuer.mint("rotator-attempt-2")
        assert info.value.code == "KEY_LIMIT_REACHED"

        cred.raw = second
        assert issuer.revoke(old.id).status == "revoked"
        assert issuer.revoke(old.id).status == "revoked"  # idempotent
        assert not emu.key_accepted(first)
        assert emu.key_accepted(second)
        statuses = {k.id: k.status for k in issuer.list_keys()}
        assert statuses == {old.id: "revoked", minted.key.id: "active"}
        assert issuer.probe(Secret(second))
        assert not issuer.probe(Secret(first))
        with pytest.raises(VendorNotFound):
            issuer.revoke("key_does_not_exist")
    for record in caplog.records:
        assert first not in record.getMessage()
        assert second not in record.getMessage()


def test_workspace_key_may_revoke_itself(server: EmulatorServer) -> None:
    """A key revoking itself succeeds; its next request is refused."""
    first = server.emulator.bootstrap_workspace_key()
    with adjudon(server, Cred(first)) as issuer:
        [key] = issuer.list_keys()
        assert issuer.revoke(key.id).status == "revoked"
        with pytest.raises(VendorAuthError) as info:
            issuer.list_keys()
    assert info.value.code == "TOKEN_REVOKED"


def test_agent_key_lifecycle(server: EmulatorServer) -> None:
    """Agent keys are minted, limited to two, measured and revoked within their scope."""
    emu = server.emulator
    cred = Cred(emu.bootstrap_workspace_key())
    other = emu.create_agent_key("billing")
    with adjudon(server, cred, agent_id="payments") as issuer, adjudon(server, cred) as ws:
        assert issuer.list_keys() == []
        a = issuer.mint("attempt-a")
        b = issuer.mint("attempt-b")
        assert a.value.reveal().startswith("adj_agent_")
        with pytest.raises(KeyLimitReached):
            issuer.mint("attempt-c")
        assert {k.id for k in issuer.list_keys()} == {a.key.id, b.key.id}
        assert len(ws.list_keys()) == 1  # agent keys are not in the workspace scope
        assert issuer.probe(b.value)
        assert not issuer.matches(Secret(other), a.key)

        before = datetime.now(UTC) - timedelta(seconds=1)
        assert issuer.activity(a.key.id).last_used_at is None
        ingest(server, a.value.reveal(), n=3)
        act = issuer.activity(a.key.id, since=before)
        assert act.requests_since == 3
        assert act.last_used_at is not None
        assert act.last_used_at >= before
        later = datetime.now(UTC) + timedelta(seconds=5)
        assert issuer.activity(a.key.id, since=later).requests_since == 0

        assert issuer.revoke(a.key.id).status == "revoked"
        assert not emu.key_accepted(a.value.reveal())
        assert not issuer.probe(a.value)
        assert emu.key_accepted(other)
        assert issuer.mint("attempt-c").key.status == "active"


def test_agent_key_cannot_manage_keys(server: EmulatorServer) -> None:
    """A management call made with an agent key is a 403, never retried."""
    agent = server.emulator.create_agent_key("payments")
    with adjudon(server, Cred(agent)) as issuer, pytest.raises(VendorAuthError) as info:
        issuer.list_keys()
    assert (info.value.status, info.value.code) == (403, "FORBIDDEN")
    assert len(server.emulator.request_log()) == 1


def test_x_api_key_header_is_accepted(server: EmulatorServer) -> None:
    """The vendor takes the key in X-API-Key as well as in a bearer header."""
    raw = server.emulator.bootstrap_workspace_key()
    good = httpx.get(f"{server.url}/api/v1/api-keys", headers={"X-API-Key": raw})
    assert good.status_code == 200
    assert [k["prefix"] for k in good.json()["data"]] == [raw[:13]]
    bad = httpx.get(f"{server.url}/api/v1/api-keys", headers={"X-API-Key": "adj_live_" + "0" * 64})
    assert bad.status_code == 401


def test_hash_chain_audit(server: EmulatorServer) -> None:
    """Chain status and verify report the traces per key, and a tampered entry."""
    emu = server.emulator
    cred = Cred(emu.bootstrap_workspace_key())
    agent = emu.create_agent_key("payments")
    [agent_id] = [k["id"] for k in emu.adjudon_keys() if k["type"] == "agent"]
    ingest(server, agent, n=4)
    with adjudon(server, cred) as issuer:
        assert issuer.chain_status().length == 4
        report = issuer.verify_chain(datetime.now(UTC) - timedelta(minutes=1), None)
        assert (report.valid, report.checked, report.first_invalid) == (True, 4, None)
        assert dict(report.traces_by_key) == {agent_id: 4}
        emu.tamper_trace(2)
        broken = issuer.verify_chain()
        assert not broken.valid
        assert broken.first_invalid is not None


def test_rate_limit_then_success(server: EmulatorServer) -> None:
    """A 429 is waited out as long as Retry-After says, then the call succeeds."""
    emu = server.emulator
    cred = Cred(emu.bootstrap_workspace_key())
    emu.faults.retry_after = 0.25
    emu.faults.fail_next = [429]
    sleeps = Sleeps()
    with adjudon(server, cred, sleeps=sleeps) as issuer:
        assert len(issuer.list_keys()) == 1
    assert sleeps == [0.25]
    assert [status for _, _, status in emu.request_log()] == [429, 200]


def test_mint_retried_on_503_but_not_on_dropped_connection(server: EmulatorServer) -> None:
    """A 503 before processing is retried; a connection dropped unanswered is not."""
    emu = server.emulator
    cred = Cred(emu.bootstrap_workspace_key())
    with adjudon(server, cred) as issuer:
        emu.faults.fail_next = [503]
        issuer.mint("attempt-1")
        assert [s for m, _, s in emu.request_log() if m == "POST"] == [503, 201]
        emu.faults.fail_next = [0]
        with pytest.raises(VendorOutcomeUnknown):
            issuer.mint("attempt-2")
        assert [s for m, _, s in emu.request_log() if m == "POST"] == [503, 201, 0]


def test_mint_timeout_is_not_repeated(server: EmulatorServer) -> None:
    """A mint whose answer is late is reported once: the vendor holds exactly one new key."""
    emu = server.emulator
    cred = Cred(emu.bootstrap_workspace_key())
    emu.faults.path_delays = {r"^POST /api/v1/api-keys$": 0.6}
    with adjudon(server, cred, timeout=0.2) as issuer, pytest.raises(VendorOutcomeUnknown):
        issuer.mint("attempt-orphan")
    names = [k["name"] for k in emu.adjudon_keys()]
    assert names.count("attempt-orphan") == 1


def test_unavailable_vendor_gives_up(server: EmulatorServer) -> None:
    """A vendor failing every try ends in VendorUnavailable after the policy's attempts."""
    emu = server.emulator
    cred = Cred(emu.bootstrap_workspace_key())
    emu.faults.fail_next = [503, 502, 500, 503]
    with adjudon(server, cred) as issuer, pytest.raises(VendorUnavailable, match="gave up"):
        issuer.list_keys()
    assert len(emu.request_log()) == FAST.attempts


def test_adjutor_reset_cycle(server: EmulatorServer) -> None:
    """A reset returns a new key and revokes the old one at once; revoke only confirms."""
    emu = server.emulator
    old = emu.create_app("app_123")
    cred = Cred(old)
    with adjutor(server, cred) as issuer:
        [current] = issuer.list_keys()
        assert current.id == f"app_123@{old[:12]}"
        assert issuer.matches(Secret(old), current)
        with pytest.raises(VendorRejected):
            issuer.mint("n")
        minted = issuer.mint("n", current=Secret(old))
        new = minted.value.reveal()
        assert not emu.key_accepted(old)
        assert emu.key_accepted(new)
        assert not issuer.probe(Secret(old))
        with pytest.raises(VendorAuthError):
            issuer.list_keys()  # the target still holds the old key

        cred.raw = new
        assert [k.id for k in issuer.list_keys()] == [minted.key.id]
        gone = issuer.revoke(current.id)
        assert (gone.id, gone.status) == (current.id, "revoked")
        with pytest.raises(VendorRejected, match="only by reset"):
            issuer.revoke(minted.key.id)
        assert issuer.probe(Secret(new))
        karma = httpx.get(
            f"{server.url}/v2/verification/karma/someone", headers={"Authorization": f"Bearer {new}"}
        )
        assert karma.status_code == 200
        act = issuer.activity(minted.key.id)
        assert act.last_used_at is not None
        with pytest.raises(VendorNotFound):
            issuer.activity(current.id)
    assert emu.app_info("app_123")["key_prefix"] == new[:12]
