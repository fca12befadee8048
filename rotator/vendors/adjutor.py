"""Adjútor: a reset vendor. One key per app; a reset replaces it and revokes the old one.

The app's key is managed with itself: every call here is authenticated by the
app's current key, which the engine reads from the key's target. The vendor
has no key ids; the rotator names a key ``<app_id>@<key_prefix>``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

import httpx

from rotator.abc import Activity, Capabilities, Minted, VendorKey
from rotator.errors import VendorAuthError, VendorNotFound, VendorProtocolError, VendorRejected
from rotator.secret import Secret
from rotator.vendors._answers import Obj, Reply
from rotator.vendors._http import HTTPIssuer, RetryPolicy, VendorHTTP
from rotator.vendors._keyformat import KeyFormat

PREFIX_LEN = 12
KEY_FORMAT = KeyFormat("an app key", "sk_live_", 40, "A-Za-z0-9", "letters or digits", PREFIX_LEN)


@dataclass(frozen=True)
class _App:
    name: str
    key_prefix: str
    key_created_at: datetime
    last_used_at: datetime | None


class AdjutorIssuer(HTTPIssuer):
    """The one key of an Adjútor app; ``credential`` yields the app's current key."""

    def __init__(
        self,
        issuer: str,
        base_url: str,
        *,
        app_id: str,
        credential: Callable[[], Secret],
        timeout: float = 10.0,
        http: httpx.Client | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.app_id = app_id
        self._name = f"{issuer}/app:{app_id}"
        self._path = f"/v2/apps/{quote(app_id, safe='')}"
        self._credential = credential
        self._http = VendorHTTP(self._name, base_url, timeout=timeout, http=http, retry=retry, sleep=sleep)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(max_active=1, overlap=False, prefix_len=PREFIX_LEN)

    def key_id(self, prefix: str) -> str:
        """The rotator's id of the app's key with ``prefix``."""
        return f"{self.app_id}@{prefix}"

    # -- the Issuer protocol

    def list_keys(self) -> list[VendorKey]:
        """The app's current key (the vendor forgets keys once reset)."""
        app = self._app(self._credential)
        return [self._current(app)]

    def mint(self, name: str, *, current: Secret | None = None) -> Minted:
        """Reset the app's key, authenticated by ``current``, which the reset revokes.

        ``name`` is unused: the vendor does not name keys. Not repeated after a
        timeout (see :class:`VendorOutcomeUnknown`): the first reset may have
        revoked ``current`` already.
        """
        if current is None:
            raise VendorRejected(f"{self._name}: a reset needs the app's current key")
        reply = self._http.call(
            "POST", f"{self._path}/key/reset", credential=lambda: current, idempotent=False
        )
        data = _success(reply).data()
        app = _app_info(data, self.app_id)
        key = self._current(app)
        raw = data.get("api_key")
        problem = KEY_FORMAT.problem(raw, app.key_prefix)
        if problem is not None or not isinstance(raw, str):
            raise VendorProtocolError(
                f"{reply.where}: the reset key {key.id} {problem}; the app's previous key "
                "is revoked, the app needs a manual reset"
            )
        return Minted(key=key, value=Secret(raw))

    def activity(self, key_id: str, since: datetime | None = None) -> Activity:
        """The app's ``last_used_at``, while ``key_id`` is the app's current key.

        The vendor counts no requests, and keeps nothing about a key reset away:
        asking for one is :class:`VendorNotFound`.
        """
        app = self._app(self._credential)
        if key_id != self.key_id(app.key_prefix):
            raise VendorNotFound(f"{self._name}: key {key_id} is no longer the app's key")
        return Activity(key_id=key_id, last_used_at=app.last_used_at)

    def revoke(self, key_id: str) -> VendorKey:
        """Confirm ``key_id`` is revoked: only a reset revokes, so it must be reset away."""
        app_id, _, prefix = key_id.rpartition("@")
        if app_id != self.app_id:
            raise VendorNotFound(f"{self._name}: key {key_id} is not a key of this app")
        app = self._app(self._credential)
        if prefix == app.key_prefix:
            raise VendorRejected(f"{self._name}: a reset vendor revokes only by reset")
        # The vendor forgets a key once reset: the current key's creation is when
        # the old one was revoked (by the last reset), and the best bound we have
        # for its creation.
        return VendorKey(
            id=key_id,
            prefix=prefix,
            name=app.name,
            status="revoked",
            created_at=app.key_created_at,
            revoked_at=app.key_created_at,
        )

    def probe(self, value: Secret) -> bool:
        """True when the vendor accepts ``value`` on ``GET /v2/apps/{app_id}``.

        The probe sets the app's ``last_used_at`` like any request.
        """
        try:
            self._app(lambda: value)
        except VendorAuthError:
            return False
        return True

    def matches(self, value: Secret, key: VendorKey) -> bool:
        """True when ``value`` is an app key starting with ``key.prefix``."""
        return KEY_FORMAT.matches(value, key)

    # -- helpers

    def _app(self, credential: Callable[[], Secret]) -> _App:
        reply = self._http.call("GET", self._path, credential=credential)
        return _app_info(_success(reply).data(), self.app_id)

    def _current(self, app: _App) -> VendorKey:
        return VendorKey(
            id=self.key_id(app.key_prefix),
            prefix=app.key_prefix,
            name=app.name,
            status="active",
            created_at=app.key_created_at,
            last_used_at=app.last_used_at,
        )


def _success(reply: Reply) -> Reply:
    status = reply.body.get("status")
    if status is not None and status != "success":
        raise VendorProtocolError(f"{reply.where}: answer status is not 'success'")
    return reply


def _app_info(data: Obj, app_id: str) -> _App:
    if data.string("app_id") != app_id:
        raise VendorProtocolError(f"{data.where}: another app came back")
    prefix = data.string("key_prefix")
    if len(prefix) != PREFIX_LEN:
        raise VendorProtocolError(f"{data.where}: key_prefix is not {PREFIX_LEN} characters")
    return _App(
        name=data.string("name"),
        key_prefix=prefix,
        key_created_at=data.time("key_created_at"),
        last_used_at=data.opt_time("last_used_at"),
    )
