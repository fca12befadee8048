"""Emulated Adjútor: one key per app; a reset revokes the calling key at once.

Only SHA-256 digests of keys are kept. Routes and bodies follow the vendor API
contract (section 2).
"""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from urllib.parse import unquote

from rotator.sandbox._common import (
    Request,
    Response,
    adjutor_error,
    adjutor_ok,
    digest,
    iso,
)

PREFIX_LEN: Final = 12
KEY_RE: Final = re.compile(r"sk_live_[A-Za-z0-9]{40}")
_ALPHABET: Final = string.ascii_letters + string.digits

_APP = re.compile(r"/v2/apps/(?P<app_id>[^/]+)")
_RESET = re.compile(r"/v2/apps/(?P<app_id>[^/]+)/key/reset")
_KARMA = re.compile(r"/v2/verification/karma/(?P<identity>[^/]+)")


@dataclass
class _App:
    app_id: str
    name: str
    key_digest: str
    key_prefix: str
    key_created_at: datetime
    last_used_at: datetime | None = None

    def info(self) -> dict[str, Any]:
        return {
            "app_id": self.app_id,
            "name": self.name,
            "key_prefix": self.key_prefix,
            "key_created_at": iso(self.key_created_at),
            "last_used_at": iso(self.last_used_at),
        }


def _new_key() -> str:
    return "sk_live_" + "".join(secrets.choice(_ALPHABET) for _ in range(40))


class Adjutor:
    """State and endpoints of Adjútor apps. Callers hold the emulator's lock."""

    def __init__(self) -> None:
        self.apps: dict[str, _App] = {}
        self._current: dict[str, str] = {}
        """Digest of each app's current key -> app id."""
        self._revoked: dict[str, str] = {}
        """Digest of every key a reset replaced -> app id."""

    # ------------------------------------------------------------------ state

    def create_app(self, app_id: str, name: str, now: datetime) -> str:
        """Register an app with a fresh key; returns the raw key."""
        if app_id in self.apps:
            raise ValueError(f"app {app_id!r} already exists")
        raw = _new_key()
        self.apps[app_id] = _App(app_id, name, digest(raw), raw[:PREFIX_LEN], now)
        self._current[digest(raw)] = app_id
        return raw

    def reset(self, app: _App, now: datetime) -> str:
        """Replace the app's key; the old one stops working at once."""
        raw = _new_key()
        del self._current[app.key_digest]
        self._revoked[app.key_digest] = app.app_id
        app.key_digest, app.key_prefix, app.key_created_at = digest(raw), raw[:PREFIX_LEN], now
        self._current[app.key_digest] = app.app_id
        return raw

    def accepts(self, key_digest: str) -> bool:
        return key_digest in self._current

    # ------------------------------------------------------------------ HTTP

    def handle(self, req: Request) -> Response:
        """Route, authenticate, authorise and answer one request."""
        if (match := _RESET.fullmatch(req.path)) is not None:
            method, scoped = "POST", True
        elif (match := _APP.fullmatch(req.path)) is not None:
            method, scoped = "GET", True
        elif (match := _KARMA.fullmatch(req.path)) is not None:
            method, scoped = "GET", False
        else:
            return adjutor_error(404, "Route not found")
        if req.method != method:
            return adjutor_error(405, "Method not allowed")
        caller = self._authenticate(req)
        if isinstance(caller, Response):
            return caller
        caller.last_used_at = req.now
        params = {k: unquote(v) for k, v in match.groupdict().items()}
        if not scoped:
            return adjutor_ok("Successful", _karma(params["identity"]))
        app = self.apps.get(params["app_id"])
        if app is None:
            return adjutor_error(404, "App not found")
        if app is not caller:
            return adjutor_error(403, "This API key does not belong to this app")
        if method == "GET":
            return adjutor_ok("App retrieved", app.info())
        raw = self.reset(app, req.now)
        return adjutor_ok("API key reset", {**app.info(), "api_key": raw})

    def _authenticate(self, req: Request) -> _App | Response:
        scheme, _, token = req.headers.get("authorization", "").strip().partition(" ")
        raw = token.strip() if scheme.lower() == "bearer" else ""
        if not raw:
            return adjutor_error(401, "Authorization token is missing")
        if not KEY_RE.fullmatch(raw):
            return adjutor_error(401, "Invalid API key format")
        key_digest = digest(raw)
        if key_digest in self._revoked:
            return adjutor_error(401, "This API key has been revoked")
        app_id = self._current.get(key_digest)
        if app_id is None:
            return adjutor_error(401, "Invalid API key")
        return self.apps[app_id]


def _karma(identity: str) -> dict[str, Any]:
    return {
        "karma_identity": identity,
        "amount_in_contention": "0.00",
        "reason": None,
        "default_date": None,
        "karma_type": {"karma": "Others"},
    }
