"""The example vendor's client: a :class:`rotator.abc.Issuer` over its small HTTP API.

``GET /v1/keys``, ``POST /v1/keys``, ``GET /v1/keys/{id}/activity``, ``DELETE /v1/keys/{id}``
take the admin token; ``GET /v1/ping`` takes a key itself (the probe). A key is ``exk_`` and 32
lowercase hex digits; the vendor shows its first 12 characters as its prefix.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

import httpx

from rotator.abc import Activity, Capabilities, Minted, VendorKey
from rotator.errors import (
    KeyLimitReached,
    VendorAuthError,
    VendorError,
    VendorNotFound,
    VendorOutcomeUnknown,
    VendorProtocolError,
    VendorRejected,
    VendorUnavailable,
)
from rotator.secret import Secret

KEY_FORMAT: Final = re.compile(r"exk_[0-9a-f]{32}")
PREFIX_LEN: Final = 12
_STATUSES: Final = ("active", "inactive", "revoked")


class ExampleIssuer:
    """One account of the example vendor: at most two active keys, overlapping."""

    def __init__(
        self,
        issuer: str,
        base_url: str,
        *,
        credential: Callable[[], Secret],
        timeout: float = 10.0,
        http: httpx.Client | None = None,
    ) -> None:
        self._name = issuer
        self._base = base_url.rstrip("/")
        self._credential = credential
        self._http = http or httpx.Client(timeout=timeout, follow_redirects=False)
        self._owned = http is None

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(max_active=2, overlap=True, prefix_len=PREFIX_LEN)

    @property
    def name(self) -> str:
        return self._name

    def close(self) -> None:
        if self._owned:
            self._http.close()

    def list_keys(self) -> list[VendorKey]:
        body = self._call("GET", "/v1/keys", what="list keys")
        keys = body.get("keys")
        if not isinstance(keys, list):
            raise VendorProtocolError(f"{self._name}: list keys: the answer has no key list")
        return [self._key(k, "list keys") for k in keys]

    def mint(self, name: str, *, current: Secret | None = None) -> Minted:
        body = self._call("POST", "/v1/keys", what="mint", json={"name": name}, unsure=True)
        raw = body.get("secret")
        if not isinstance(raw, str) or not KEY_FORMAT.fullmatch(raw):
            raise VendorProtocolError(f"{self._name}: mint: the new key is not exk_ and 32 hex digits")
        key = self._key(body.get("key"), "mint")
        if raw[:PREFIX_LEN] != key.prefix:
            raise VendorProtocolError(f"{self._name}: mint: the new key does not have the prefix listed")
        return Minted(key=key, value=Secret(raw))

    def activity(self, key_id: str, since: datetime | None = None) -> Activity:
        params = {"since": since.isoformat()} if since is not None else None
        body = self._call("GET", f"/v1/keys/{key_id}/activity", what="activity", params=params)
        count = body.get("requests_since")
        return Activity(
            key_id=key_id,
            last_used_at=_time(body.get("last_used_at"), self._name),
            requests_since=count if isinstance(count, int) else None,
        )

    def revoke(self, key_id: str) -> VendorKey:
        return self._key(self._call("DELETE", f"/v1/keys/{key_id}", what="revoke"), "revoke")

    def probe(self, value: Secret) -> bool:
        if not KEY_FORMAT.fullmatch(value.reveal()):
            return False  # never send something that is not a key of ours
        try:
            self._call("GET", "/v1/ping", what="probe", token=value)
        except VendorAuthError:
            return False
        return True

    def matches(self, value: Secret, key: VendorKey) -> bool:
        raw = value.reveal()
        return bool(KEY_FORMAT.fullmatch(raw)) and raw[:PREFIX_LEN] == key.prefix

    # ------------------------------------------------------------------ transport

    def _call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        token: Secret | None = None,
        unsure: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        bearer = (token or self._credential()).reveal()
        where = f"{self._name}: {what}"
        try:
            answer = self._http.request(
                method, self._base + path, headers={"Authorization": f"Bearer {bearer}"}, **kwargs
            )
        except httpx.HTTPError as exc:
            kind = VendorOutcomeUnknown if unsure else VendorUnavailable
            raise kind(f"{where}: {type(exc).__name__}") from None
        status = answer.status_code
        if status >= 400:
            code = _code(answer)
            message = f"{where}: HTTP {status}" + (f" {code}" if code else "")
            kinds: dict[int, type[VendorError]] = {
                401: VendorAuthError,
                403: VendorAuthError,
                404: VendorNotFound,
            }
            if status == 409:
                raise KeyLimitReached(message, status=status, code=code)
            if status == 429 or status >= 500:
                raise VendorUnavailable(message, status=status, code=code)
            raise kinds.get(status, VendorRejected)(message, status=status, code=code)
        try:
            body = answer.json()
        except ValueError:
            raise VendorProtocolError(f"{where}: the answer is not JSON") from None
        if not isinstance(body, dict):
            raise VendorProtocolError(f"{where}: the answer is not a JSON object")
        return body

    def _key(self, data: object, what: str) -> VendorKey:
        where = f"{self._name}: {what}"
        if not isinstance(data, dict):
            raise VendorProtocolError(f"{where}: a key is not a JSON object")
        status = data.get("status")
        key_id, prefix, name = data.get("id"), data.get("prefix"), data.get("name")
        if not (isinstance(key_id, str) and isinstance(prefix, str) and isinstance(name, str)):
            raise VendorProtocolError(f"{where}: a key lacks its id, prefix or name")
        if status not in _STATUSES:
            raise VendorProtocolError(f"{where}: key {key_id} has an unknown status")
        created = _time(data.get("created_at"), self._name)
        if created is None:
            raise VendorProtocolError(f"{where}: key {key_id} has no created_at")
        return VendorKey(
            id=key_id,
            prefix=prefix,
            name=name,
            status=status,
            created_at=created,
            last_used_at=_time(data.get("last_used_at"), self._name),
            revoked_at=_time(data.get("revoked_at"), self._name),
        )


def _code(answer: httpx.Response) -> str | None:
    try:
        body = answer.json()
    except ValueError:
        return None
    code = body.get("error") if isinstance(body, dict) else None
    return code if isinstance(code, str) and code.isidentifier() else None


def _time(value: object, issuer: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise VendorProtocolError(f"{issuer}: a time in the answer is not ISO 8601") from None
    if parsed.tzinfo is None:
        raise VendorProtocolError(f"{issuer}: a time in the answer has no time zone")
    return parsed
