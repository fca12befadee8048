"""The one contract every overlap issuer honours, over its vendor's real HTTP API.

The ``issuer_harness`` fixture is parametrized over the vendors; each harness has the shape
of ``tests/issuer_harness.py``. A plugin runs the same tests by importing them into its own
test module beside a ``issuer_harness`` fixture of its own (``tests/test_plugin_example.py``).
Every error the suite provokes is checked for the key values it knows.
"""

from __future__ import annotations

import traceback
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from rotator.abc import Issuer
from rotator.errors import KeyLimitReached, VendorAuthError, VendorError
from rotator.sandbox.emulator import EmulatorServer
from rotator.secret import Secret
from rotator.spec import AdjudonIssuerSpec, FileTarget, KeySpec
from tests.issuer_harness import IssuerHarness


class AdjudonHarness:
    """Adjudon agent scopes on the project's emulator: each issuer a fresh agent."""

    name = "adjudon"

    def __init__(self, server: EmulatorServer) -> None:
        self.server = server
        self.admin = server.emulator.bootstrap_workspace_key()

    def _issuer(self, admin: str) -> Issuer:
        spec = AdjudonIssuerSpec(type="adjudon", base_url=self.server.url, credential={"env": "UNUSED"})  # type: ignore[arg-type]
        key = KeySpec(
            issuer="emu",
            kind="agent",
            agent_id=f"agent-{uuid.uuid4().hex[:8]}",
            targets=[FileTarget(type="file", path="unused")],
        )
        return spec.make_issuer(key, credential=lambda: Secret(admin))

    def make_issuer(self) -> Issuer:
        return self._issuer(self.admin)

    def denied_issuer(self) -> Issuer:
        return self._issuer("adj_live_" + "0" * 64)

    def use(self, value: str) -> bool:
        import httpx

        answer = httpx.post(
            f"{self.server.url}/api/v1/traces",
            json={"event": "contract"},
            headers={"Authorization": f"Bearer {value}"},
            timeout=10,
        )
        return answer.status_code < 300


@pytest.fixture
def adjudon_issuer_harness(emulator: EmulatorServer) -> AdjudonHarness:
    return AdjudonHarness(emulator)


@pytest.fixture(params=["adjudon"])
def issuer_harness(request: pytest.FixtureRequest) -> IssuerHarness:
    """The vendor under test, from its ``<vendor>_issuer_harness`` fixture."""
    found: IssuerHarness = request.getfixturevalue(f"{request.param}_issuer_harness")
    return found


def _check_error(exc: BaseException, values: list[str]) -> None:
    whole = "".join(traceback.format_exception(exc)) + repr(exc)
    for value in values:
        assert value not in whole, f"a key value leaked into {type(exc).__name__}"


def test_a_fresh_scope_lists_no_key(issuer_harness: IssuerHarness) -> None:
    issuer = issuer_harness.make_issuer()
    assert [k for k in issuer.list_keys() if k.active] == []
    assert issuer.capabilities.overlap and issuer.capabilities.max_active >= 2


def test_mint_lists_matches_and_probes(issuer_harness: IssuerHarness) -> None:
    """A minted key is listed active, matches its own listing only, and the vendor accepts it."""
    issuer = issuer_harness.make_issuer()
    before = datetime.now(UTC) - timedelta(seconds=5)
    first = issuer.mint(f"rotator:contract:{uuid.uuid4()}")
    second = issuer.mint(f"rotator:contract:{uuid.uuid4()}")
    assert first.value != second.value
    listed = {k.id: k for k in issuer.list_keys()}
    assert listed[first.key.id].active and listed[second.key.id].active
    assert listed[first.key.id].created_at >= before
    assert issuer.matches(first.value, listed[first.key.id])
    assert not issuer.matches(first.value, listed[second.key.id])
    assert len(first.key.prefix) == issuer.capabilities.prefix_len
    assert first.value.reveal() not in repr(listed) + repr(first)
    assert issuer.probe(first.value) and issuer.probe(second.value)


def test_key_limit(issuer_harness: IssuerHarness) -> None:
    """Beyond ``max_active`` keys, mint raises KeyLimitReached and shows no value."""
    issuer = issuer_harness.make_issuer()
    values = [issuer.mint(f"k{i}").value.reveal() for i in range(issuer.capabilities.max_active)]
    with pytest.raises(KeyLimitReached) as info:
        issuer.mint("one-too-many")
    _check_error(info.value, values)


def test_activity_follows_use(issuer_harness: IssuerHarness) -> None:
    """A consumer's request shows in the key's activity; an unused key has none."""
    issuer = issuer_harness.make_issuer()
    used, idle = issuer.mint("used"), issuer.mint("idle")
    since = datetime.now(UTC) - timedelta(seconds=5)
    assert issuer_harness.use(used.value.reveal())
    seen = issuer.activity(used.key.id, since)
    assert seen.key_id == used.key.id and seen.last_used_at is not None
    assert seen.requests_since is None or seen.requests_since >= 1
    assert issuer.activity(idle.key.id, since).last_used_at is None


def test_revoke_is_final_and_idempotent(issuer_harness: IssuerHarness) -> None:
    """A revoked key is listed inactive, refused by the vendor, and revoking it again is fine."""
    issuer = issuer_harness.make_issuer()
    minted = issuer.mint("to-revoke")
    revoked = issuer.revoke(minted.key.id)
    assert revoked.id == minted.key.id and not revoked.active
    assert not issuer.probe(minted.value)
    assert not issuer_harness.use(minted.value.reveal())
    assert not issuer.revoke(minted.key.id).active
    assert not {k.id: k for k in issuer.list_keys()}[minted.key.id].active


def test_refused_credential_is_an_auth_error(issuer_harness: IssuerHarness) -> None:
    """A management credential the vendor refuses is VendorAuthError, never a value in it."""
    good = issuer_harness.make_issuer()
    value = good.mint("kept").value.reveal()
    denied = issuer_harness.denied_issuer()
    for call in (denied.list_keys, lambda: denied.mint("x")):
        with pytest.raises(VendorError) as info:
            call()
        assert isinstance(info.value, VendorAuthError), type(info.value)
        _check_error(info.value, [value])
