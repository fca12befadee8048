"""HashiCorp Vault / OpenBao KV version 2 behind :class:`rotator.abc.SecretStore`.

KV v2 keeps numbered versions of a map and has no staging labels, and
consumers read the latest version. So:

* **stage** writes a new version (with check-and-set, so mounts with
  ``cas_required`` work). It becomes the latest at once: consumers see it
  right away, which is harmless in the overlap strategy (both keys are valid)
  and what the cutover strategy wants (the old key is already dead). A sibling
  path for pending values would hide it from consumers, but every consumer
  and policy would then have to know about it, and the value would live twice.
* **stamps** go to the secret's ``custom_metadata`` (``rotator-v<N>`` -> compact
  JSON), never into the data. A stamp without ``promoted_at`` marks version N
  as staged: while the latest version carries one, :meth:`VaultStore.read`
  reports it as ``pending`` and, as ``current``, the newest version below it
  that is not itself an unpromoted staging. **promote** only adds
  ``promoted_at`` to the stamp.
* The stamp is written *before* the data, so the data write is the commit
  point: a crash in between leaves a stamp naming a version that does not
  exist (or, after someone else's write, one whose fingerprint does not match);
  both are ignored on read and pruned on the next write. Stamps of versions no
  longer kept are pruned too (custom_metadata holds at most 64 keys of 128
  bytes, values of 512 bytes).
* ``revision`` is the data version plus the metadata version (OpenBao's
  ``current_metadata_version``, sent back as ``metadata_cas``); Vault has no
  metadata check-and-set, so there it falls back to ``updated_time``.
* An external write on top of a staged version supersedes it: that staging is
  no longer pending, and promoting it is a :class:`StoreConflict`.

The token's policy needs ``read``, ``create`` and ``update`` on both
``<mount>/data/<path>`` and ``<mount>/metadata/<path>``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rotator.abc import Stamp, StoredVersion, TargetState
from rotator.builtin.stores import VaultTarget
from rotator.errors import (
    ConfigError,
    StoreAccessDenied,
    StoreConflict,
    StoreError,
    StoreFormatError,
    StoreNotFound,
    StoreUnavailable,
)
from rotator.net import require_tls
from rotator.secret import Secret

_PREFIX = "rotator-v"
_MAX_KEYS = 64  # custom_metadata limits of Vault and OpenBao
_MAX_VALUE = 512
_MAX_STAMPS = 16  # ours, newest first; the rest of the 64 stay for the operators
_TIMEOUT = 15


def _one_line(errors: list[str] | None) -> str:
    """Vault's error strings on one line: OpenBao wraps them as ``1 error occurred:\n\t* ...``."""
    parts = []
    for error in errors or []:
        text = re.sub(r"^\s*\d+ errors? occurred:", "", str(error))
        parts += [line.strip(" \t*") for line in text.splitlines() if line.strip(" \t*")]
    return "; ".join(parts)


def open_store(target: VaultTarget, *, base_dir: Path, client: Any | None = None) -> VaultStore:
    """The store for ``target``; ``client`` is an authenticated ``hvac.Client`` (for tests)."""
    where = f"vault target {target.url}"
    require_tls("vault target", target.url)  # the rule validate applies too
    if target.auth.method == "kubernetes" and not target.auth.role:
        raise ConfigError(f"{where}: auth method kubernetes needs a role")
    return VaultStore(target, base_dir=base_dir, client=client)


@dataclass
class _Snapshot:
    """The secret's metadata at one instant, with the version data fetched so far."""

    exists: bool
    latest: int = 0
    kept: set[int] = field(default_factory=set)
    custom: dict[str, str] = field(default_factory=dict)
    metadata_version: int | None = None
    revision: str | None = None
    data: dict[int, dict[str, Any] | None] = field(default_factory=dict)

    def stamp(self, n: int) -> Stamp | None:
        text = self.custom.get(f"{_PREFIX}{n}")
        return Stamp.from_json(text) if text else None


class VaultStore:
    """One field of one KV v2 secret. See the module docstring for how staging works."""

    def __init__(self, target: VaultTarget, *, base_dir: Path, client: Any | None = None) -> None:
        self.target = target
        self._base_dir = base_dir
        self._hvac = client
        self._injected = client is not None

    @property
    def name(self) -> str:
        return f"vault:{self.target.mount}/{self.target.path}#{self.target.field}"

    def __repr__(self) -> str:
        return f"VaultStore({self.name})"

    # ------------------------------------------------------------------ protocol

    def read(self) -> TargetState:
        snap = self._load()
        current, pending = self._resolve(snap)
        return TargetState(current, pending, snap.revision)

    def stage(self, value: Secret, stamp: Stamp, *, expected: str | None) -> None:
        if stamp.fingerprint != value.fingerprint:
            raise ValueError("a stamp must carry the fingerprint of the value it stamps")
        snap = self._load()
        if any(v is not None and v.written_by(stamp) for v in self._resolve(snap)):
            return
        if expected is not None and expected != snap.revision:
            raise StoreConflict(
                self.name,
                f"changed since it was read (revision {expected} is now {snap.revision}); not writing",
            )
        base = snap.data.get(snap.latest) if snap.latest else None
        data = {**(base or {}), self.target.field: value.reveal()}
        n = snap.latest + 1
        custom = self._pruned(snap, {f"{_PREFIX}{n}": replace(stamp, promoted_at=None).to_json()})
        self._put_metadata(snap, custom)
        try:
            self._call(
                "write",
                lambda c: c.secrets.kv.v2.create_or_update_secret(
                    path=self.target.path, secret=data, cas=snap.latest, mount_point=self.target.mount
                ),
            )
        except StoreConflict:
            self._drop_stamp(n)
            raise

    def promote(self, attempt: str, promoted_at: datetime) -> None:
        snap = self._load()
        current, pending = self._resolve(snap)
        if current is not None and current.stamp is not None and current.stamp.attempt == attempt:
            return
        if pending is not None and pending.stamp is not None and pending.stamp.attempt == attempt:
            stamp = replace(pending.stamp, promoted_at=promoted_at)
            self._put_metadata(snap, self._pruned(snap, {_PREFIX + pending.version: stamp.to_json()}))
            return
        for n in sorted(snap.kept, reverse=True):
            found = snap.stamp(n)
            if found is not None and found.attempt == attempt:
                raise StoreConflict(
                    self.name,
                    f"version {n} staged by attempt {attempt} was "
                    f"superseded by version {snap.latest}; stage it again",
                )
        raise StoreNotFound(self.name, f"no version staged by attempt {attempt}")

    def check_access(self) -> None:
        data_path, meta_path = self._api_path("data"), self._api_path("metadata")
        answer = self._call("check access to", lambda c: c.sys.get_capabilities(paths=[data_path, meta_path]))
        caps = answer.get("data") or answer
        exists = self._load().exists
        need = {"read", "update" if exists else "create"}
        missing = []
        for path in (data_path, meta_path):
            got = set(caps.get(path) or [])
            if "root" in got:
                continue
            lacking = sorted(need - got) if "deny" not in got else sorted(need)
            if lacking:
                missing.append(f"{'/'.join(lacking)} on {path}")
        if missing:
            raise StoreAccessDenied(self.name, "the token's policy lacks " + "; ".join(missing))

    # ------------------------------------------------------------------ reading

    def _load(self) -> _Snapshot:
        try:
            answer = self._call(
                "read metadata of",
                lambda c: c.secrets.kv.v2.read_secret_metadata(
                    path=self.target.path, mount_point=self.target.mount
                ),
            )
        except StoreNotFound:
            return _Snapshot(exists=False)
        meta = answer["data"]
        latest = int(meta.get("current_version") or 0)
        mver = meta.get("current_metadata_version")
        kept = {int(n) for n, v in (meta.get("versions") or {}).items() if not v.get("destroyed")}
        token = f"m{mver}" if mver is not None else f"t{meta.get('updated_time', '')}"
        snap = _Snapshot(
            exists=True,
            latest=latest,
            kept=kept,
            custom=dict(meta.get("custom_metadata") or {}),
            metadata_version=None if mver is None else int(mver),
            revision=f"v{latest}.{token}",
        )
        if latest:
            snap.data[latest] = self._fetch(latest)
        return snap

    def _fetch(self, n: int) -> dict[str, Any] | None:
        """The data of version ``n``; None when it is deleted, destroyed or gone."""
        try:
            answer = self._call(
                "read",
                lambda c: c.secrets.kv.v2.read_secret_version(
                    path=self.target.path,
                    version=n,
                    mount_point=self.target.mount,
                    raise_on_deleted_version=True,
                ),
            )
        except StoreNotFound:
            return None
        data = answer["data"]["data"]
        return dict(data) if isinstance(data, dict) else None

    def _version(self, snap: _Snapshot, n: int) -> StoredVersion | None:
        if n not in snap.data:
            snap.data[n] = self._fetch(n)
        data = snap.data[n]
        if data is None or self.target.field not in data:
            return None
        raw = data[self.target.field]
        if not isinstance(raw, str):
            raise StoreFormatError(
                self.name,
                f"version {n}: field {self.target.field!r} holds a {type(raw).__name__}, not a string",
            )
        value = Secret(raw)
        stamp = snap.stamp(n)
        if stamp is not None and stamp.fingerprint != value.fingerprint:
            stamp = None  # a stamp left by a write that never landed
        return StoredVersion(str(n), value, stamp)

    def _resolve(self, snap: _Snapshot) -> tuple[StoredVersion | None, StoredVersion | None]:
        """(current, pending) as the module docstring defines them."""
        if not snap.latest:
            return None, None
        top = self._version(snap, snap.latest)
        if top is None or top.stamp is None or top.stamp.promoted_at is not None:
            return top, None
        for n in sorted((k for k in snap.kept if k < snap.latest), reverse=True):
            below = self._version(snap, n)
            if snap.data[n] is None:
                continue  # deleted: consumers never fall back to it
            if below is not None and below.stamp is not None and below.stamp.promoted_at is None:
                continue  # an older staging that was never promoted
            return below, top
        return None, top

    # ------------------------------------------------------------------ writing

    def _pruned(self, snap: _Snapshot, add: dict[str, str]) -> dict[str, str]:
        """custom_metadata with ``add`` and the stamps of the newest kept versions only."""
        for text in add.values():
            if len(text.encode()) > _MAX_VALUE:
                raise StoreFormatError(
                    self.name,
                    f"the stamp does not fit custom_metadata "
                    f"({_MAX_VALUE} bytes); the vendor key id is too long",
                )
        ours = sorted(
            (
                int(k[len(_PREFIX) :])
                for k in snap.custom
                if k.startswith(_PREFIX) and k[len(_PREFIX) :].isdigit()
            ),
            reverse=True,
        )
        keep = [n for n in ours if n in snap.kept][: _MAX_STAMPS - len(add)]
        out = {
            k: v
            for k, v in snap.custom.items()
            if not (k.startswith(_PREFIX) and k[len(_PREFIX) :].isdigit())
        }
        out.update({f"{_PREFIX}{n}": snap.custom[f"{_PREFIX}{n}"] for n in keep})
        out.update(add)
        if len(out) > _MAX_KEYS:
            raise StoreFormatError(
                self.name,
                f"custom_metadata would hold {len(out)} keys, more "
                f"than the {_MAX_KEYS} allowed; remove some by hand",
            )
        return out

    def _put_metadata(self, snap: _Snapshot, custom: dict[str, str]) -> None:
        body: dict[str, Any] = {"custom_metadata": custom}
        if snap.metadata_version is not None or not snap.exists:
            body["metadata_cas"] = snap.metadata_version or 0  # OpenBao; Vault ignores it
        # not hvac's update_metadata: it also resets the secret's delete_version_after
        url = "/v1/" + quote(self._api_path("metadata"))
        self._call("write metadata of", lambda c: c.adapter.post(url=url, json=body))

    def _drop_stamp(self, n: int) -> None:
        """After a lost race, remove the stamp written for version ``n`` (best effort)."""
        try:
            snap = self._load()
            key = f"{_PREFIX}{n}"
            if key in snap.custom:
                self._put_metadata(snap, {k: v for k, v in snap.custom.items() if k != key})
        except StoreError:
            pass  # harmless: its fingerprint will not match, and the next write prunes it

    # ------------------------------------------------------------------ the edge

    def _api_path(self, kind: str) -> str:
        """``<mount>/<kind>/<path>``, as policies and capabilities name it."""
        return f"{self.target.mount.strip('/')}/{kind}/{self.target.path.strip('/')}"

    def _call(self, action: str, fn: Callable[[Any], Any]) -> Any:
        """Run one hvac call, logging in first; a non-token login is renewed once on 403."""
        import hvac.exceptions

        for retry in (False, True):
            with self._errors(action):
                client = self._client()
                try:
                    return fn(client)
                except hvac.exceptions.Forbidden:
                    if retry or self._injected or self.target.auth.method == "token":
                        raise
                    self._hvac = None  # the login's token may have expired
        raise AssertionError("unreachable")

    def _client(self) -> Any:
        if self._hvac is not None:
            return self._hvac
        import hvac

        auth = self.target.auth
        env = os.environ
        client = hvac.Client(url=self.target.url, token="", namespace=self.target.namespace, timeout=_TIMEOUT)
        if auth.method == "token":
            token = env.get(auth.token_env)
            if not token:
                raise StoreAccessDenied(self.name, f"no Vault token: set {auth.token_env}")
            client.token = token
        elif auth.method == "approle":
            role_id = env.get(auth.role_id_env)
            if not role_id:
                raise StoreAccessDenied(self.name, f"no AppRole role id: set {auth.role_id_env}")
            with self._errors("log in (approle) for", login=True):
                client.auth.approle.login(
                    role_id=role_id,
                    secret_id=env.get(auth.secret_id_env),
                    mount_point=auth.mount or "approle",
                )
        else:
            jwt_path = self._base_dir / auth.jwt_path
            try:
                jwt = jwt_path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise StoreAccessDenied(
                    self.name, f"cannot read the Kubernetes service account token {jwt_path} ({exc.strerror})"
                ) from None
            with self._errors("log in (kubernetes) for", login=True):
                client.auth.kubernetes.login(role=auth.role, jwt=jwt, mount_point=auth.mount or "kubernetes")
        self._hvac = client
        return client

    @contextmanager
    def _errors(self, action: str, *, login: bool = False) -> Iterator[None]:
        """Translate hvac and network errors into StoreErrors naming the secret, never a value."""
        import hvac.exceptions as hx
        import requests

        try:
            yield
        except StoreError:
            raise
        except hx.InvalidPath:
            raise StoreNotFound(self.name, f"cannot {action} it: not found") from None
        except (hx.Forbidden, hx.Unauthorized) as exc:
            why = _one_line(exc.errors) or "permission denied"
            raise StoreAccessDenied(
                self.name,
                f"cannot {action} it: {why} (check the token's "
                f"policy for {self._api_path('data')} and "
                f"{self._api_path('metadata')})",
            ) from None
        except hx.InvalidRequest as exc:
            why = _one_line(exc.errors) or "bad request"
            if login:
                raise StoreAccessDenied(self.name, f"cannot {action} it: {why}") from None
            if "check-and-set" in why:
                raise StoreConflict(self.name, f"another writer changed it first ({why})") from None
            raise StoreError(self.name, f"cannot {action} it: {why}") from None
        except (
            hx.VaultDown,
            hx.InternalServerError,
            hx.BadGateway,
            hx.RateLimitExceeded,
            hx.VaultNotInitialized,
        ) as exc:
            why = _one_line(exc.errors) or type(exc).__name__
            raise StoreUnavailable(self.name, f"cannot {action} it: Vault answered {why}") from None
        except hx.VaultError as exc:
            why = _one_line(exc.errors) or type(exc).__name__
            raise StoreError(self.name, f"cannot {action} it: {why}") from None
        except requests.exceptions.SSLError:
            raise StoreError(
                self.name, f"cannot {action} it: TLS verification of {self.target.url} failed"
            ) from None
        except requests.exceptions.RequestException as exc:
            raise StoreUnavailable(
                self.name, f"cannot {action} it: {self.target.url} is unreachable ({type(exc).__name__})"
            ) from None
