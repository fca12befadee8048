"""Emulated Adjudon: workspace and agent keys, at most two active per scope, traces.

Only SHA-256 digests of keys are kept. Routes, bodies and error codes follow
the vendor API contract (section 1).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final
from urllib.parse import unquote

from rotator.abc import parse_time
from rotator.sandbox._chain import HashChain
from rotator.sandbox._common import (
    BadBody,
    Request,
    Response,
    adjudon_error,
    digest,
    iso,
    json_body,
)

MAX_ACTIVE: Final = 2
PREFIX_LEN: Final = 13
WORKSPACE_RE: Final = re.compile(r"adj_live_[0-9a-f]{64}")
AGENT_RE: Final = re.compile(r"adj_agent_[0-9a-f]{48}")


class KeyLimitError(Exception):
    """The scope already holds :data:`MAX_ACTIVE` active keys."""

    def __init__(self, active: list[str]) -> None:
        super().__init__(f"{len(active)} keys already active in this scope")
        self.active = active


@dataclass
class _Key:
    id: str
    type: str
    name: str
    prefix: str
    agent_id: str | None
    digest: str
    created_at: datetime
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    uses: list[datetime] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "name": self.name,
            "prefix": self.prefix,
            "agent_id": self.agent_id,
            "status": "active" if self.active else "revoked",
            "created_at": iso(self.created_at),
            "revoked_at": iso(self.revoked_at),
            "last_used_at": iso(self.last_used_at),
        }


_Handler = Callable[["Adjudon", Request, _Key, dict[str, str]], Response]


class Adjudon:
    """State and endpoints of one Adjudon workspace. Callers hold the emulator's lock."""

    def __init__(self) -> None:
        self.keys: dict[str, _Key] = {}
        self._by_digest: dict[str, str] = {}
        self.chain = HashChain()

    # ------------------------------------------------------------------ state

    def mint(self, type_: str, name: str, agent_id: str | None, now: datetime) -> tuple[_Key, str]:
        """Create an active key; returns it and its raw value (shown once)."""
        active = [k.id for k in self.keys.values() if k.active and k.type == type_ and k.agent_id == agent_id]
        if len(active) >= MAX_ACTIVE:
            raise KeyLimitError(active)
        raw = (
            f"adj_live_{secrets.token_hex(32)}"
            if type_ == "workspace"
            else f"adj_agent_{secrets.token_hex(24)}"
        )
        key = _Key(
            id=f"key_{secrets.token_hex(8)}",
            type=type_,
            name=name,
            prefix=raw[:PREFIX_LEN],
            agent_id=agent_id,
            digest=digest(raw),
            created_at=now,
        )
        self.keys[key.id] = key
        self._by_digest[key.digest] = key.id
        return key, raw

    def infos(self) -> list[dict[str, Any]]:
        return [k.info() for k in self.keys.values()]

    def accepts(self, key_digest: str) -> bool:
        key_id = self._by_digest.get(key_digest)
        return key_id is not None and self.keys[key_id].active

    # ------------------------------------------------------------------ HTTP

    def handle(self, req: Request) -> Response:
        """Route, authenticate, authorise and answer one request."""
        allowed: list[str] = []
        for method, pattern, handler, workspace_only in _ROUTES:
            match = pattern.fullmatch(req.path)
            if match is None:
                continue
            if method != req.method:
                allowed.append(method)
                continue
            key_or_error = self._authenticate(req)
            if isinstance(key_or_error, Response):
                return key_or_error
            key = key_or_error
            key.last_used_at = req.now
            key.uses.append(req.now)
            if workspace_only and key.type != "workspace":
                return adjudon_error(req, 403, "FORBIDDEN", "agent keys may only ingest")
            params = {k: unquote(v) for k, v in match.groupdict().items()}
            try:
                return handler(self, req, key, params)
            except BadBody as exc:
                return adjudon_error(req, 422, "VALIDATION_ERROR", str(exc))
        if allowed:
            response = adjudon_error(req, 405, "METHOD_NOT_ALLOWED", "method not allowed")
            response.headers["Allow"] = ", ".join(allowed)
            return response
        return adjudon_error(req, 404, "NOT_FOUND", "no such endpoint")

    def _authenticate(self, req: Request) -> _Key | Response:
        auth = req.headers.get("authorization")
        raw: str | None = None
        if auth is not None:
            scheme, _, token = auth.strip().partition(" ")
            if scheme.lower() == "bearer":
                raw = token.strip()
                if not raw and "x-api-key" not in req.headers:
                    return adjudon_error(req, 401, "NO_TOKEN", "the bearer token is empty")
        if not raw:
            raw = req.headers.get("x-api-key", "").strip()
        if not raw:
            return adjudon_error(req, 401, "NO_API_KEY", "no API key was sent")
        if not (WORKSPACE_RE.fullmatch(raw) or AGENT_RE.fullmatch(raw)):
            return adjudon_error(req, 401, "INVALID_API_KEY_FORMAT", "not an Adjudon key")
        key_id = self._by_digest.get(digest(raw))
        if key_id is None:
            return adjudon_error(req, 401, "INVALID_API_KEY", "unknown API key")
        key = self.keys[key_id]
        if not key.active:
            return adjudon_error(req, 401, "TOKEN_REVOKED", "the API key has been revoked")
        return key

    def find(self, req: Request, key_id: str) -> _Key | Response:
        key = self.keys.get(key_id)
        if key is None:
            return adjudon_error(req, 404, "KEY_NOT_FOUND", "no key with this id")
        return key


# ---------------------------------------------------------------------- endpoints


def _health(state: Adjudon, req: Request, caller: _Key, params: dict[str, str]) -> Response:
    return Response(200, {"status": "ok"})


def _list_keys(state: Adjudon, req: Request, caller: _Key, params: dict[str, str]) -> Response:
    type_ = req.param("type")
    if type_ not in (None, "", "workspace", "agent"):
        raise BadBody("type must be workspace or agent")
    agent_id = req.param("agent_id")
    keys = [
        k.info()
        for k in state.keys.values()
        if (not type_ or k.type == type_) and (not agent_id or k.agent_id == agent_id)
    ]
    return Response(200, {"data": keys})


def _create_key(state: Adjudon, req: Request, caller: _Key, params: dict[str, str]) -> Response:
    body = json_body(req.body)
    if not isinstance(body, dict):
        raise BadBody("the body must be a JSON object")
    type_, name, agent_id = body.get("type"), body.get("name"), body.get("agent_id")
    if type_ not in ("workspace", "agent"):
        raise BadBody("type must be workspace or agent")
    if not isinstance(name, str) or not name.strip():
        raise BadBody("name must be a non-empty string")
    if type_ == "agent" and (not isinstance(agent_id, str) or not agent_id.strip()):
        raise BadBody("an agent key needs an agent_id")
    if type_ == "workspace" and agent_id is not None:
        raise BadBody("a workspace key takes no agent_id")
    try:
        key, raw = state.mint(type_, name, agent_id, req.now)
    except KeyLimitError as exc:
        return adjudon_error(
            req,
            409,
            "KEY_LIMIT_REACHED",
            str(exc),
            {"limit": MAX_ACTIVE, "active_key_ids": exc.active},
        )
    return Response(201, {"data": {**key.info(), "key": raw}})


def _get(state: Adjudon, req: Request, caller: _Key, params: dict[str, str]) -> Response:
    key = state.find(req, params["id"])
    return key if isinstance(key, Response) else Response(200, {"data": key.info()})


def _revoke(state: Adjudon, req: Request, caller: _Key, params: dict[str, str]) -> Response:
    key = state.find(req, params["id"])
    if isinstance(key, Response):
        return key
    if key.revoked_at is None:
        key.revoked_at = req.now
    return Response(200, {"data": key.info()})


def _activity(state: Adjudon, req: Request, caller: _Key, params: dict[str, str]) -> Response:
    key = state.find(req, params["id"])
    if isinstance(key, Response):
        return key
    since = _time(req.param("since"), "since")
    count = len(key.uses) if since is None else sum(1 for t in key.uses if t >= since)
    data = {"key_id": key.id, "last_used_at": iso(key.last_used_at), "requests_since": count}
    return Response(200, {"data": data})


def _ingest(state: Adjudon, req: Request, caller: _Key, params: dict[str, str]) -> Response:
    trace = state.chain.append(caller.id, req.now, json_body(req.body, empty={}))
    return Response(201, {"data": {"id": trace.id}})


def _chain_status(state: Adjudon, req: Request, caller: _Key, params: dict[str, str]) -> Response:
    return Response(200, {"data": {"length": len(state.chain), "head": state.chain.head}})


def _chain_verify(state: Adjudon, req: Request, caller: _Key, params: dict[str, str]) -> Response:
    body = json_body(req.body, empty={})
    if not isinstance(body, dict):
        raise BadBody("the body must be a JSON object")
    start, end = _time(body.get("from"), "from"), _time(body.get("to"), "to")
    return Response(200, {"data": state.chain.verify(start, end)})


def _time(value: object, name: str) -> datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadBody(f"{name} must be an RFC 3339 time")
    try:
        return parse_time(value)
    except ValueError as exc:
        raise BadBody(f"{name} must be an RFC 3339 time") from exc


_KEY = r"/api/v1/api-keys/(?P<id>[^/]+)"
_ROUTES: Final[list[tuple[str, re.Pattern[str], _Handler, bool]]] = [
    ("GET", re.compile(r"/health"), _health, False),
    ("GET", re.compile(r"/api/v1/api-keys"), _list_keys, True),
    ("POST", re.compile(r"/api/v1/api-keys"), _create_key, True),
    ("GET", re.compile(_KEY), _get, True),
    ("DELETE", re.compile(_KEY), _revoke, True),
    ("GET", re.compile(_KEY + "/activity"), _activity, True),
    ("POST", re.compile(r"/api/v1/traces"), _ingest, False),
    ("GET", re.compile(r"/api/v1/hash-chain/status"), _chain_status, False),
    ("POST", re.compile(r"/api/v1/hash-chain/verify"), _chain_verify, True),
]
