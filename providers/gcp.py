"""GCP Secret Manager behind :class:`rotator.abc.SecretStore`.

A secret's versions are numbered 1, 2, ...; the rotator keeps its own state in
the secret's metadata, never in a payload:

* version aliases: ``current_alias`` names the version the rotator regards as
  current, ``pending_alias`` the one it staged and has not promoted yet;
* annotations: one stamp per version, ``rotator-v<N>`` -> compact JSON.
  Annotations hold at most 16 KiB in all, so stamps of versions that are no
  longer enabled are pruned on every write, and the oldest ones after that if
  the budget is still exceeded (never those of the current or pending version).

What consumers read decides what staging means (``consumers_read``):

* ``alias``: consumers access ``versions/<current_alias>``. Staging adds a
  version nobody reads; promote moves the alias (and drops ``pending_alias``)
  in one conditional ``UpdateSecret``. Staging is invisible, as the engine's
  model assumes. Before the alias exists (a secret filled by hand), the newest
  enabled version the rotator did not stage counts as current, so it can be
  adopted.
* ``latest``: consumers access ``versions/latest``, so a staged version is read
  at once. That is safe because both keys are valid between stage and promote
  (overlap), and wanted anyway after a cutover reset. The current alias still
  records which version the rotator regards as current, and
  :meth:`GcpStore.read` reports that one while the newest version is a staged
  one; any other newest version is what consumers read, so it is current. If
  another writer added a version after staging, promote adds the staged value
  again on top, since versions cannot be re-ordered.

``AddSecretVersion`` takes no etag, and a version's existence cannot carry a
stamp. So stage first *reserves* the next version number with a conditional
``UpdateSecret`` (the stamp under ``rotator-v<N+1>``, which is also the
conflict check against ``expected``), then adds the version, then points the
pending alias at it. A crash at any point leaves either nothing, a reservation
a retry reuses, or a stamped version: never an unstamped version that would
look like an orphan key. Stamps are only believed when the fingerprint of the
version's value matches, which covers another writer taking the reserved
number. The revision is the secret's etag plus the newest version number,
since adding a version does not change the etag.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from providers._field import FieldCodec
from rotator.abc import Stamp, StoredVersion, TargetState
from rotator.builtin.stores import GcpTarget
from rotator.errors import (
    StoreAccessDenied,
    StoreConflict,
    StoreError,
    StoreFormatError,
    StoreNotFound,
    StoreUnavailable,
)
from rotator.net import is_loopback
from rotator.secret import Secret, fingerprint

_PREFIX = "rotator-v"
_BUDGET = 15 * 1024  # of the service's 16 KiB for all annotations, leaving room for others'
_ROUNDS = 4  # re-reads after losing an etag race before giving up with StoreConflict
_ENABLED = 1  # SecretVersion.State.ENABLED
_PERMISSIONS = (
    "secretmanager.versions.access",
    "secretmanager.versions.add",
    "secretmanager.secrets.update",
)


def open_store(target: GcpTarget, *, base_dir: Path, client: Any | None = None) -> GcpStore:
    """The store for ``target``; ``client`` (a ``SecretManagerServiceClient``) may be injected."""
    del base_dir  # nothing in a GCP target is a local path
    return GcpStore(target, client)


@dataclass(frozen=True)
class _View:
    """One observation of the secret: metadata, version states, stamps, and who is who."""

    secret: Any
    states: dict[int, int]
    stamps: dict[int, Stamp]
    current: int | None
    pending: int | None

    @property
    def latest(self) -> int:
        return max(self.states, default=0)

    @property
    def revision(self) -> str:
        return f"{self.secret.etag}/{self.latest}"

    def alias(self, name: str) -> int | None:
        number = self.secret.version_aliases.get(name)
        return int(number) if number is not None else None


class GcpStore:
    """One secret (and optionally one JSON field of it) in GCP Secret Manager."""

    def __init__(
        self,
        target: GcpTarget,
        client: Any | None = None,
        *,
        timeout: float = 10.0,
        retry_budget: float = 20.0,
    ) -> None:
        self.target = target
        self._client_obj = client
        self._timeout = timeout
        self._retry_budget = retry_budget
        self._path = f"projects/{target.project}/secrets/{target.secret}"
        suffix = f"#{target.field}" if target.field else ""
        self._name = f"gcp:{target.project}/{target.secret}{suffix}"
        self._codec = FieldCodec(self._name, target.field)

    @property
    def name(self) -> str:
        return self._name

    # ------------------------------------------------------------------ the Protocol

    def read(self) -> TargetState:
        view = self._observe()
        if view is None:
            return TargetState(None, None)
        current = self._stored(view, view.current)
        pending = self._stored(view, view.pending)
        if pending is not None and pending.stamp is None:
            pending = None  # another writer took the number we had reserved
        return TargetState(current, pending, view.revision)

    def stage(self, value: Secret, stamp: Stamp, *, expected: str | None) -> None:
        for _ in range(_ROUNDS):
            view = self._observe()
            done = self._find(view, stamp.attempt, stamp.fingerprint) if view else None
            if view is not None and done is not None:
                number = done[0]
                unpromoted = view.stamps[number].promoted_at is None
                if unpromoted and view.alias(self.target.pending_alias) != number:
                    self._point_pending(number, number, view.stamps[number])
                return
            if expected is not None and (view.revision if view else None) != expected:
                raise StoreConflict(self.name, "the secret changed since it was read")
            if view is None:
                self._create()
                continue
            payload = self._payload(view, value)
            number = view.latest + 1
            try:
                self._update(view, stamps={number: stamp}, keep={number})
            except StoreConflict:
                if expected is not None:
                    raise
                continue
            added = self._call(
                "add version",
                self._client.add_secret_version,
                write=True,
                parent=self._path,
                payload={"data": payload.encode()},
            )
            self._point_pending(_number(added.name), number, stamp)
            return
        raise StoreConflict(self.name, "the secret kept changing while staging")

    def promote(self, attempt: str, promoted_at: datetime) -> None:
        for _ in range(_ROUNDS):
            view = self._observe()
            found = self._find(view, attempt) if view else None
            if view is None or found is None:
                raise StoreNotFound(self.name, f"no version of attempt {attempt}")
            number, value = found
            stamp = view.stamps[number]
            if view.alias(self.target.current_alias) == number and stamp.promoted_at:
                return
            promoted = Stamp(stamp.key_id, stamp.fingerprint, stamp.attempt, promoted_at)
            stamps = {number: promoted}
            if self.target.consumers_read == "latest" and number != view.latest:
                # another writer added a version after ours: consumers read that one,
                # so our value goes on top again (versions cannot be re-ordered)
                text = self._payload(view, Secret(value), base=view.latest)
                added = self._call(
                    "add version",
                    self._client.add_secret_version,
                    write=True,
                    parent=self._path,
                    payload={"data": text.encode()},
                )
                number = _number(added.name)
                stamps[number] = promoted
            aliases = dict(view.secret.version_aliases)
            aliases[self.target.current_alias] = number
            if aliases.get(self.target.pending_alias) in stamps:
                del aliases[self.target.pending_alias]
            try:
                self._update(view, stamps=stamps, aliases=aliases, keep=set(stamps))
            except StoreConflict:
                continue
            return
        raise StoreConflict(self.name, "the secret kept changing while promoting")

    def check_access(self) -> None:
        try:
            self._call("get secret", self._client.get_secret, name=self._path)
        except StoreNotFound:
            return  # nothing to test on yet; the first stage creates it
        granted = self._call(
            "test permissions",
            self._client.test_iam_permissions,
            request={"resource": self._path, "permissions": list(_PERMISSIONS)},
        )
        missing = sorted(set(_PERMISSIONS) - set(granted.permissions))
        if missing:
            raise StoreAccessDenied(self.name, f"missing permissions: {', '.join(missing)}")

    # ------------------------------------------------------------------ beyond the Protocol

    def disable_version(self, ref: str) -> None:
        """Disable the version written by attempt ``ref``, or numbered ``ref``. Idempotent.

        For the version of a revoked key. Consumers still reading it get
        FAILED_PRECONDITION instead of a dead key, so the engine disables only
        versions no consumer reads any more.
        """
        view = self._observe()
        if view is None:
            raise StoreNotFound(self.name, "the secret does not exist")
        if ref.isdigit():
            number: int | None = int(ref)
        else:
            number = max(
                (n for n, s in view.stamps.items() if s.attempt == ref and n in view.states), default=None
            )
        if number is None or number not in view.states:
            raise StoreNotFound(self.name, f"no version {ref}")
        if view.states[number] == _ENABLED:
            self._call(
                "disable version", self._client.disable_secret_version, name=f"{self._path}/versions/{number}"
            )

    def retire(self, key_id: str) -> list[int]:
        """Disable every enabled version that holds ``key_id``, a key the vendor has revoked,
        except the current and pending ones. Returns the version numbers disabled."""
        view = self._observe()
        if view is None:
            return []
        done = []
        for number, stamp in sorted(view.stamps.items()):
            if (
                stamp.key_id == key_id
                and view.states.get(number) == _ENABLED
                and number not in (view.current, view.pending)
            ):
                self._call(
                    "disable version",
                    self._client.disable_secret_version,
                    name=f"{self._path}/versions/{number}",
                )
                done.append(number)
        return done

    # ------------------------------------------------------------------ observing

    def _observe(self) -> _View | None:
        try:
            secret = self._call("get secret", self._client.get_secret, name=self._path)
            listed = self._call("list versions", self._client.list_secret_versions, parent=self._path)
        except StoreNotFound:
            return None
        states = {_number(v.name): int(v.state) for v in listed}
        stamps: dict[int, Stamp] = {}
        for key, raw in secret.annotations.items():
            number, decoded = _stamp_number(key), Stamp.from_json(raw)
            if number is not None and decoded is not None:
                stamps[number] = decoded
        enabled = {n for n, state in states.items() if state == _ENABLED}
        staged = {n for n in enabled if n in stamps and stamps[n].promoted_at is None}
        settled = enabled - staged
        alias_current = secret.version_aliases.get(self.target.current_alias)
        latest = max(states, default=None)
        current: int | None
        if self.target.consumers_read == "latest" and latest not in staged:
            current = latest
        elif alias_current is not None:
            current = int(alias_current)
        else:  # a secret put there by hand, before the rotator managed it
            current = max(settled, default=None)
        if current not in enabled:
            current = None
        candidates = staged - {current}
        alias_pending = secret.version_aliases.get(self.target.pending_alias)
        pending = alias_pending if alias_pending in candidates else max(candidates, default=None)
        return _View(secret, states, stamps, current, pending)

    def _access(self, number: int) -> str:
        response = self._call(
            "access version", self._client.access_secret_version, name=f"{self._path}/versions/{number}"
        )
        try:
            return str(response.payload.data.decode("utf-8"))
        except UnicodeDecodeError:
            raise StoreFormatError(self.name, f"version {number} is not UTF-8 text") from None

    def _extract(self, text: str, number: int) -> str | None:
        """The key held in ``text``: the whole text, or the target's field of a JSON object."""
        return self._codec.read(text, f"version {number}")

    def _stored(self, view: _View, number: int | None) -> StoredVersion | None:
        if number is None:
            return None
        value = self._extract(self._access(number), number)
        if value is None:
            return None
        stamp = view.stamps.get(number)
        if stamp is not None and stamp.fingerprint != fingerprint(value):
            stamp = None
        return StoredVersion(str(number), Secret(value), stamp)

    def _find(self, view: _View, attempt: str, fp: str | None = None) -> tuple[int, str] | None:
        """The newest enabled version stamped by ``attempt`` whose value matches its stamp."""
        for number in sorted(view.stamps, reverse=True):
            stamp = view.stamps[number]
            if stamp.attempt != attempt or view.states.get(number) != _ENABLED:
                continue
            if fp is not None and stamp.fingerprint != fp:
                continue
            value = self._extract(self._access(number), number)
            if value is not None and fingerprint(value) == stamp.fingerprint:
                return number, value
        return None

    # ------------------------------------------------------------------ writing

    def _payload(self, view: _View, value: Secret, base: int | None = None) -> str:
        """The text of a new version: the value, or the value merged into the read JSON."""
        number = base if base is not None else view.current
        text = self._access(number) if number and not self._codec.whole else None
        return self._codec.merge(text, value.reveal(), f"version {number}")

    def _create(self) -> None:
        with contextlib.suppress(StoreConflict):  # created by another writer meanwhile
            self._call(
                "create secret",
                self._client.create_secret,
                write=True,
                parent=f"projects/{self.target.project}",
                secret_id=self.target.secret,
                secret={"replication": {"automatic": {}}, "labels": {"managed-by": "rotator"}},
            )

    def _point_pending(self, number: int, reserved: int, stamp: Stamp) -> None:
        """Point the pending alias at ``number`` and move the stamp there if needed."""
        for _ in range(_ROUNDS):
            view = self._observe()
            if view is None:
                raise StoreNotFound(self.name, "the secret was deleted while staging")
            aliases = dict(view.secret.version_aliases)
            aliases[self.target.pending_alias] = number
            drop = {reserved} if reserved != number else set()
            try:
                self._update(view, stamps={number: stamp}, aliases=aliases, keep={number}, drop=drop)
            except StoreConflict:
                continue
            return
        raise StoreConflict(self.name, "the secret kept changing while staging")

    def _update(
        self,
        view: _View,
        *,
        stamps: dict[int, Stamp],
        keep: set[int],
        aliases: dict[str, int] | None = None,
        drop: set[int] | frozenset[int] = frozenset(),
    ) -> None:
        """One conditional ``UpdateSecret`` of the stamps (pruned) and maybe the aliases."""
        ours = {n: s for n, s in view.stamps.items() if view.states.get(n) == _ENABLED and n not in drop}
        ours.update(stamps)
        annotations = {k: v for k, v in view.secret.annotations.items() if _stamp_number(k) is None}
        protected = keep | {n for n in (view.current, view.pending) if n is not None}
        encoded = {n: s.to_json() for n, s in ours.items()}
        size = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
        size += sum(len(f"{_PREFIX}{n}") + len(v.encode()) for n, v in encoded.items())
        for n in sorted(encoded):
            if size <= _BUDGET:
                break
            if n not in protected:
                size -= len(f"{_PREFIX}{n}") + len(encoded.pop(n).encode())
        annotations.update({f"{_PREFIX}{n}": v for n, v in encoded.items()})
        secret: dict[str, Any] = {"name": self._path, "etag": view.secret.etag, "annotations": annotations}
        paths = ["annotations"]
        if aliases is not None:
            secret["version_aliases"] = aliases
            paths.append("version_aliases")
        self._call(
            "update secret",
            self._client.update_secret,
            write=True,
            secret=secret,
            update_mask={"paths": paths},
        )

    # ------------------------------------------------------------------ the SDK edge

    @property
    def _client(self) -> Any:
        if self._client_obj is None:
            self._client_obj = _make_client(self.target.endpoint, self.name)
        return self._client_obj

    def _call(self, what: str, method: Callable[..., Any], *, write: bool = False, **kwargs: Any) -> Any:
        """Call the SDK with bounded time, translating its errors into the rotator's kinds.

        Reads are retried on transient errors; writes are not, since a lost
        answer to AddSecretVersion may hide a version that was added.
        """
        from google.api_core import exceptions as gexc
        from google.api_core.retry import Retry, if_exception_type

        transient = (gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.InternalServerError)
        retry = (
            None
            if write
            else Retry(
                predicate=if_exception_type(*transient),
                initial=0.1,
                maximum=2.0,
                timeout=self._retry_budget,
            )
        )
        try:
            return method(**kwargs, retry=retry, timeout=self._timeout)
        except gexc.NotFound:
            raise StoreNotFound(self.name, f"{what}: not found") from None
        except (gexc.PermissionDenied, gexc.Unauthenticated) as exc:
            raise StoreAccessDenied(self.name, f"{what}: {_code(exc)}") from None
        except (gexc.Aborted, gexc.FailedPrecondition, gexc.AlreadyExists) as exc:
            # etag mismatch (FAILED_PRECONDITION as documented, ABORTED per AIP-154) or a
            # version disabled between our list and our access: both mean "re-read"
            raise StoreConflict(self.name, f"{what}: {_code(exc)}") from None
        except (*transient, gexc.RetryError) as exc:
            raise StoreUnavailable(self.name, f"{what}: {_code(exc)}") from None
        except gexc.GoogleAPICallError as exc:
            raise StoreError(self.name, f"{what}: {_code(exc)}") from None


def _make_client(endpoint: str | None, store: str) -> Any:
    """A client for ``endpoint``: plaintext to loopback, TLS anywhere else, ADC unless loopback."""
    import google.auth.exceptions
    from google.cloud import secretmanager_v1 as sm

    try:
        if endpoint and _is_loopback(endpoint):
            import grpc
            from google.auth.credentials import AnonymousCredentials
            from google.cloud.secretmanager_v1.services.secret_manager_service.transports import (
                SecretManagerServiceGrpcTransport,
            )

            transport = SecretManagerServiceGrpcTransport(
                channel=grpc.insecure_channel(endpoint),
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            )
            return sm.SecretManagerServiceClient(transport=transport)
        if endpoint:
            return sm.SecretManagerServiceClient(client_options={"api_endpoint": endpoint})
        return sm.SecretManagerServiceClient()
    except google.auth.exceptions.DefaultCredentialsError:
        raise StoreAccessDenied(store, "no application default credentials") from None


def _is_loopback(endpoint: str) -> bool:
    """``host:port`` (or a bare host) names a loopback address."""
    host = endpoint.rsplit(":", 1)[0] if endpoint.count(":") == 1 or "]:" in endpoint else endpoint
    return is_loopback(host)


def _code(exc: Exception) -> str:
    """The gRPC code of a google.api_core error (its message may quote request data)."""
    code = getattr(exc, "grpc_status_code", None)
    return str(code.name) if code is not None else type(exc).__name__


def _number(version_name: str) -> int:
    return int(version_name.rsplit("/", 1)[1])


def _stamp_number(annotation: str) -> int | None:
    """``rotator-v7`` -> 7; ``None`` for annotations that are not stamps."""
    rest = annotation.removeprefix(_PREFIX)
    return int(rest) if rest != annotation and rest.isdigit() else None
