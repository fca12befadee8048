"""Adjudon: an overlap vendor (two active keys per scope), workspace and agent keys.

One :class:`AdjudonIssuer` is bound to one scope: the workspace, or one
``agent_id``. Keys are managed with a workspace key (``credential``), which is
itself rotated in its own scope.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

import httpx

from rotator.abc import Activity, Capabilities, KeyStatus, Minted, VendorKey, format_time
from rotator.errors import ConfigError, VendorAuthError, VendorProtocolError
from rotator.secret import Secret
from rotator.vendors._answers import Obj, Reply
from rotator.vendors._http import HTTPIssuer, RetryPolicy, VendorHTTP
from rotator.vendors._keyformat import KeyFormat

PREFIX_LEN = 13
KEY_FORMATS: Mapping[str, KeyFormat] = {
    "workspace": KeyFormat("a workspace key", "adj_live_", 64, "0-9a-f", "hex", PREFIX_LEN),
    "agent": KeyFormat("an agent key", "adj_agent_", 48, "0-9a-f", "hex", PREFIX_LEN),
}
_STATUSES: Mapping[str, KeyStatus] = {"active": "active", "inactive": "inactive", "revoked": "revoked"}

Kind = Literal["workspace", "agent"]


@dataclass(frozen=True)
class ChainStatus:
    """Length and head hash of the vendor's trace hash chain."""

    length: int
    head: str


@dataclass(frozen=True)
class ChainReport:
    """The vendor's check of its hash chain over a window, with traces per key."""

    valid: bool
    checked: int
    first_invalid: int | None
    traces_by_key: Mapping[str, int] = field(default_factory=dict)


class AdjudonIssuer(HTTPIssuer):
    """The keys of one Adjudon scope, managed with a workspace key.

    ``credential`` is called for every request, so the engine can switch the
    management key right after rotating it.
    """

    def __init__(
        self,
        issuer: str,
        base_url: str,
        *,
        kind: Kind,
        agent_id: str | None = None,
        credential: Callable[[], Secret],
        timeout: float = 10.0,
        http: httpx.Client | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if kind == "agent" and not agent_id:
            raise ConfigError(f"{issuer}: an agent key needs an agent_id")
        if kind == "workspace" and agent_id:
            raise ConfigError(f"{issuer}: a workspace key has no agent_id")
        self.kind: Kind = kind
        self.agent_id = agent_id
        self._name = f"{issuer}/agent:{agent_id}" if kind == "agent" else f"{issuer}/workspace"
        self._credential = credential
        self._http = VendorHTTP(self._name, base_url, timeout=timeout, http=http, retry=retry, sleep=sleep)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(max_active=2, overlap=True, prefix_len=PREFIX_LEN)

    # -- the Issuer protocol

    def list_keys(self) -> list[VendorKey]:
        """Every key of this scope, active and revoked."""
        params: dict[str, str] = {"type": self.kind}
        if self.agent_id:
            params["agent_id"] = self.agent_id
        reply = self._call("GET", "/api/v1/api-keys", params=params)
        keys = []
        for info in reply.data_list():
            key, kind, agent_id = _key_info(info)
            # The vendor filters already; filtering again keeps a key of another
            # scope from ever being revoked as if it were ours.
            if kind == self.kind and agent_id == self.agent_id:
                keys.append(key)
        return keys

    def mint(self, name: str, *, current: Secret | None = None) -> Minted:
        """Create a key named ``name`` in this scope; its format is checked first.

        ``current`` is unused: an overlap vendor mints beside the current key.
        Not repeated after a timeout (see :class:`VendorOutcomeUnknown`).
        """
        body: dict[str, Any] = {"type": self.kind, "name": name}
        if self.agent_id:
            body["agent_id"] = self.agent_id
        reply = self._call("POST", "/api/v1/api-keys", body=body, idempotent=False)
        data = reply.data()
        key, kind, agent_id = _key_info(data)
        raw = data.get("key")
        if isinstance(raw, str) and (kind != self.kind or agent_id != self.agent_id):
            problem: str | None = f"is a {kind} key (agent_id {agent_id}), not of this scope"
        else:
            problem = KEY_FORMATS[self.kind].problem(raw, key.prefix)
        if problem is not None or not isinstance(raw, str):
            raise VendorProtocolError(
                f"{reply.where}: minted key {key.id} {problem}; it is left unused at the vendor"
            )
        return Minted(key=key, value=Secret(raw))

    def activity(self, key_id: str, since: datetime | None = None) -> Activity:
        """``last_used_at`` of ``key_id`` and its requests since ``since``."""
        params = {"since": format_time(since)} if since is not None else None
        reply = self._call("GET", f"/api/v1/api-keys/{_seg(key_id)}/activity", params=params)
        data = reply.data()
        if data.string("key_id") != key_id:
            raise VendorProtocolError(f"{reply.where}: activity of another key came back")
        return Activity(
            key_id=key_id,
            last_used_at=data.opt_time("last_used_at"),
            requests_since=data.opt_integer("requests_since"),
        )

    def revoke(self, key_id: str) -> VendorKey:
        """Revoke ``key_id``; revoking a revoked key answers the same."""
        reply = self._call("DELETE", f"/api/v1/api-keys/{_seg(key_id)}")
        key, _, _ = _key_info(reply.data())
        if key.id != key_id or key.status != "revoked":
            raise VendorProtocolError(f"{reply.where}: key {key_id} is not shown as revoked")
        return key

    def probe(self, value: Secret) -> bool:
        """True when the vendor accepts ``value`` on ``GET /health``.

        The probe is a request like any other: it sets the key's ``last_used_at``.
        """
        try:
            self._http.call("GET", "/health", credential=lambda: value, want_data=False)
        except VendorAuthError:
            return False
        return True

    def matches(self, value: Secret, key: VendorKey) -> bool:
        """True when ``value`` has this scope's format and starts with ``key.prefix``."""
        return KEY_FORMATS[self.kind].matches(value, key)

    # -- the emergency audit

    def chain_status(self) -> ChainStatus:
        """Length and head of the vendor's hash chain of ingested traces."""
        data = self._call("GET", "/api/v1/hash-chain/status").data()
        return ChainStatus(length=data.integer("length"), head=data.string("head"))

    def verify_chain(self, start: datetime | None = None, end: datetime | None = None) -> ChainReport:
        """Ask the vendor to verify its chain; traces per key in ``[start, end]``."""
        body = {name: format_time(t) for name, t in (("from", start), ("to", end)) if t is not None}
        # A read-only POST: safe to repeat on any transient failure.
        data = self._call("POST", "/api/v1/hash-chain/verify", body=body).data()
        return ChainReport(
            valid=data.boolean("valid"),
            checked=data.integer("checked"),
            first_invalid=data.opt_integer("first_invalid"),
            traces_by_key=data.int_map("traces_by_key"),
        )

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        idempotent: bool = True,
    ) -> Reply:
        return self._http.call(
            method,
            path,
            credential=self._credential,
            params=params,
            body=body,
            idempotent=idempotent,
        )


def _seg(value: str) -> str:
    return quote(value, safe="")


def _key_info(info: Obj) -> tuple[VendorKey, str, str | None]:
    """A KeyInfo as a :class:`VendorKey`, with its type and agent_id."""
    status = _STATUSES.get(info.string("status"))
    if status is None:
        raise VendorProtocolError(f"{info.where}: field 'status' is not active or revoked")
    kind = info.string("type")
    if kind not in KEY_FORMATS:
        raise VendorProtocolError(f"{info.where}: field 'type' is not workspace or agent")
    key = VendorKey(
        id=info.string("id"),
        prefix=info.string("prefix"),
        name=info.string("name"),
        status=status,
        created_at=info.time("created_at"),
        last_used_at=info.opt_time("last_used_at"),
        revoked_at=info.opt_time("revoked_at"),
    )
    return key, kind, info.opt_string("agent_id")
