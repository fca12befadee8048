"""A Kubernetes ``Secret`` behind :class:`rotator.abc.SecretStore`.

Pods read one field of the Secret's ``data`` (``field``, default ``value``) as a mounted file
or an environment variable; every other field is kept. The rotator keeps its own state in
annotations, never in ``data``:

* ``rotator.dev/current``: the stamp (:meth:`Stamp.to_json`) of the value in ``data[field]``;
* ``rotator.dev/pending``: the stamp of the value staged and not yet promoted.

The staged value itself lives in a sibling Secret, ``<secret>-rotator-pending``, under the
same field. Not in the main Secret: a pod that loads the whole Secret (``envFrom``, or a
volume without ``items``) would get an extra variable or file holding a key nobody promoted,
and tools that restart pods when a Secret's data changes would restart them for a value
they must not use yet. The sibling's annotations say whose it is; a Secret of that name
holding data the rotator did not put there is never overwritten (an empty one, created by hand
so that RBAC need not grant ``create``, is taken).

Revision: the main Secret's ``metadata.resourceVersion``. Every write of the main Secret is a
JSON merge patch carrying the resourceVersion it was based on, so the API server answers 409
when someone wrote in between (optimistic concurrency, as ``kubectl apply`` relies on).

stage: read the main Secret (a changed resourceVersion is :class:`StoreConflict`), write the
sibling (create, or patch to exactly that field), then add the pending stamp to the main
Secret conditionally. A crash between the two leaves a sibling no stamp points to: read
ignores it and the retry overwrites it. promote: one conditional patch of the main Secret
sets ``data[field]`` and the current stamp (with ``promoted_at``) and drops the pending
stamp; the sibling's data is then cleared. Stamps are believed only when the fingerprint of
the value they sit beside matches, so a value written by hand reads as unstamped.

check_access runs every write it may need with ``dryRun=All`` (a patch of each Secret that
exists, a create of each that does not): RBAC and admission both answer, nothing is stored.
The Secret's version id is ``fp:<fingerprint>``: Kubernetes keeps no versions of a Secret.
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from providers import _kube
from rotator.abc import Stamp, StoredVersion, TargetState, format_time
from rotator.builtin.stores import KubernetesTarget
from rotator.errors import (
    StoreAccessDenied,
    StoreConflict,
    StoreError,
    StoreFormatError,
    StoreNotFound,
    StoreUnavailable,
)
from rotator.secret import Secret

CURRENT = "rotator.dev/current"
PENDING = "rotator.dev/pending"
PENDING_FOR = "rotator.dev/pending-for"
"""On the sibling: the name of the Secret whose pending value it holds."""
CHECKED = "rotator.dev/access-checked"
SIBLING_SUFFIX = "-rotator-pending"
_ROUNDS = 4  # re-reads after losing a resourceVersion race when no revision was expected

_log = logging.getLogger(__name__)

_ERRORS: dict[_kube.Kind, type[StoreError]] = {
    "denied": StoreAccessDenied,
    "not_found": StoreNotFound,
    "conflict": StoreConflict,
    "unavailable": StoreUnavailable,
    "rejected": StoreError,
}


def open_store(
    target: KubernetesTarget, *, base_dir: Path, api: k8s.ApiClient | None = None
) -> KubernetesStore:
    """The store for ``target``; ``api`` (an ``ApiClient``) may be injected."""
    return KubernetesStore(target, base_dir=base_dir, api=api)


@dataclass(frozen=True)
class _Observed:
    """The main Secret as read: its resourceVersion, data and annotations."""

    revision: str
    data: dict[str, str]
    annotations: dict[str, str]
    immutable: bool


class KubernetesStore:
    """One field of one Secret in one namespace."""

    def __init__(self, target: KubernetesTarget, *, base_dir: Path, api: k8s.ApiClient | None = None) -> None:
        self.target = target
        self._base_dir = base_dir
        self._api_client = api
        self._name = f"kubernetes:{target.namespace}/{target.secret}#{target.field}"
        self.sibling = f"{target.secret}{SIBLING_SUFFIX}"

    @property
    def name(self) -> str:
        return self._name

    # ------------------------------------------------------------------ the Protocol

    def read(self) -> TargetState:
        main = self._get(self.target.secret, "read")
        if main is None:
            return TargetState(None, None)
        observed = self._observe(main)
        current = self._current(observed)
        pending = self._pending(observed, "read")
        return TargetState(current, pending, observed.revision)

    def stage(self, value: Secret, stamp: Stamp, *, expected: str | None) -> None:
        for _ in range(_ROUNDS):
            main = self._get(self.target.secret, "stage")
            observed = self._observe(main) if main is not None else None
            if observed is not None and self._staged_already(observed, stamp):
                return
            revision = observed.revision if observed is not None else None
            if expected is not None and revision != expected:
                raise StoreConflict(self.name, "stage: the Secret changed since it was read")
            if observed is not None and observed.immutable:
                raise StoreError(self.name, "stage: the Secret is immutable; its data can never change")
            self._write_sibling(value, stamp)
            try:
                self._mark_pending(observed, stamp)
            except StoreConflict:
                if expected is not None:
                    raise
                continue  # someone wrote in between and no revision was promised: look again
            return
        raise StoreConflict(self.name, "stage: the Secret kept changing under us")

    def promote(self, attempt: str, promoted_at: datetime) -> None:
        for _ in range(_ROUNDS):
            main = self._get(self.target.secret, "promote")
            if main is None:
                raise StoreNotFound(self.name, "promote: the Secret does not exist")
            observed = self._observe(main)
            current = self._current(observed)
            if current is not None and current.stamp is not None and current.stamp.attempt == attempt:
                return
            pending = self._pending(observed, "promote")
            if pending is None or pending.stamp is None or pending.stamp.attempt != attempt:
                raise StoreNotFound(self.name, f"promote: no value staged by attempt {attempt}")
            stamp = pending.stamp
            done = Stamp(stamp.key_id, stamp.fingerprint, stamp.attempt, promoted_at)
            body = {
                "metadata": {
                    "resourceVersion": observed.revision,
                    "annotations": {CURRENT: done.to_json(), PENDING: None},
                },
                "data": {self.target.field: _encode(pending.value)},
            }
            try:
                self._patch(self.target.secret, body, "promote")
            except StoreConflict:
                continue
            self._clear_sibling()
            return
        raise StoreConflict(self.name, "promote: the Secret kept changing under us")

    def check_access(self) -> None:
        now = format_time(datetime.now(UTC))
        for secret in (self.target.secret, self.sibling):
            if self._get(secret, "check access") is None:
                self._create(self._fresh(secret, {}, {}), "check access", dry_run=True)
            else:
                body = {"metadata": {"annotations": {CHECKED: now}}}
                self._patch(secret, body, "check access", dry_run=True)

    # ------------------------------------------------------------------ reading

    def _observe(self, main: dict[str, Any]) -> _Observed:
        metadata = main.get("metadata") or {}
        return _Observed(
            revision=str(metadata.get("resourceVersion", "")),
            data=dict(main.get("data") or {}),
            annotations=dict(metadata.get("annotations") or {}),
            immutable=bool(main.get("immutable")),
        )

    def _current(self, observed: _Observed) -> StoredVersion | None:
        value = self._decode(observed.data, f"Secret {self.target.secret}")
        if value is None:
            return None
        return _version(value, Stamp.from_json(observed.annotations.get(CURRENT, "")))

    def _pending(self, observed: _Observed, action: str) -> StoredVersion | None:
        stamp = Stamp.from_json(observed.annotations.get(PENDING, ""))
        if stamp is None:
            return None
        sibling = self._get(self.sibling, action)
        if sibling is None:
            return None
        value = self._decode(sibling.get("data") or {}, f"Secret {self.sibling}")
        if value is None or value.fingerprint != stamp.fingerprint:
            return None  # overwritten or cleared since: nothing staged is left
        return StoredVersion(_version_id(value), value, stamp)

    def _staged_already(self, observed: _Observed, stamp: Stamp) -> bool:
        current = self._current(observed)
        if current is not None and current.written_by(stamp):
            return True
        pending = self._pending(observed, "stage")
        return pending is not None and pending.written_by(stamp)

    def _decode(self, data: dict[str, Any], what: str) -> Secret | None:
        raw = data.get(self.target.field)
        if raw is None:
            return None
        try:
            text = base64.b64decode(str(raw), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise StoreFormatError(
                self.name, f"{what}: data[{self.target.field}] is not base64 of UTF-8 text"
            ) from None
        return Secret(text) if text else None

    # ------------------------------------------------------------------ writing

    def _write_sibling(self, value: Secret, stamp: Stamp) -> None:
        annotations = {PENDING: stamp.to_json(), PENDING_FOR: self.target.secret}
        data = {self.target.field: _encode(value)}
        existing = self._get(self.sibling, "stage")
        if existing is None:
            self._create(self._fresh(self.sibling, data, annotations), "stage")
            return
        theirs = (existing.get("metadata") or {}).get("annotations") or {}
        if theirs.get(PENDING_FOR) != self.target.secret and existing.get("data"):
            raise StoreError(
                self.name, f"stage: Secret {self.sibling} holds data the rotator did not put there; rename it"
            )
        stale: dict[str, str | None] = dict.fromkeys(existing.get("data") or {})
        self._patch(
            self.sibling, {"metadata": {"annotations": annotations}, "data": {**stale, **data}}, "stage"
        )

    def _mark_pending(self, observed: _Observed | None, stamp: Stamp) -> None:
        if observed is None:
            self._create(self._fresh(self.target.secret, {}, {PENDING: stamp.to_json()}), "stage")
            return
        body = {"metadata": {"resourceVersion": observed.revision, "annotations": {PENDING: stamp.to_json()}}}
        self._patch(self.target.secret, body, "stage")

    def _clear_sibling(self) -> None:
        """Drop the promoted value from the sibling; it is current now, and one copy is enough."""
        try:
            self._patch(self.sibling, {"data": None, "metadata": {"annotations": {PENDING: None}}}, "promote")
        except StoreError as exc:  # the promotion stands; the next stage overwrites the sibling
            _log.warning("%s: could not clear Secret %s after promoting: %s", self.name, self.sibling, exc)

    def _fresh(self, name: str, data: dict[str, str], annotations: dict[str, str]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": name,
                "namespace": self.target.namespace,
                "annotations": annotations,
                "labels": {"app.kubernetes.io/managed-by": "rotator"},
            },
            "data": data,
        }

    # ------------------------------------------------------------------ the API

    def _core(self) -> k8s.CoreV1Api:
        if self._api_client is None:
            try:
                self._api_client = _kube.api_client(
                    self.target.kubeconfig, self.target.context, base_dir=self._base_dir
                )
            except _kube.KubeConfigError as exc:
                raise StoreError(self.name, str(exc)) from None
        return k8s.CoreV1Api(self._api_client)

    def _get(self, secret: str, action: str) -> dict[str, Any] | None:
        core = self._core()
        try:
            return _kube.call(core.read_namespaced_secret, secret, self.target.namespace)
        except _kube.KUBE_ERRORS as exc:
            failure = _kube.failure(exc)
            if failure.kind == "not_found":
                return None
            raise self._error(failure, action, secret) from None

    def _patch(self, secret: str, body: dict[str, Any], action: str, *, dry_run: bool = False) -> None:
        core = self._core()
        try:
            _kube.call(
                core.patch_namespaced_secret,
                secret,
                self.target.namespace,
                body,
                dry_run="All" if dry_run else None,
                _content_type=_kube.MERGE_PATCH,
            )
        except _kube.KUBE_ERRORS as exc:
            raise self._error(_kube.failure(exc), action, secret) from None

    def _create(self, body: dict[str, Any], action: str, *, dry_run: bool = False) -> None:
        core = self._core()
        try:
            _kube.call(
                core.create_namespaced_secret, self.target.namespace, body, dry_run="All" if dry_run else None
            )
        except _kube.KUBE_ERRORS as exc:
            raise self._error(_kube.failure(exc), action, body["metadata"]["name"]) from None

    def _error(self, failure: _kube.Failure, action: str, secret: str) -> StoreError:
        return _ERRORS[failure.kind](self.name, f"{action}: Secret {secret}: {failure.detail}")


def _encode(value: Secret) -> str:
    return base64.b64encode(value.reveal().encode("utf-8")).decode("ascii")


def _version_id(value: Secret) -> str:
    return f"fp:{value.fingerprint}"


def _version(value: Secret, stamp: Stamp | None) -> StoredVersion:
    believed = stamp if stamp is not None and stamp.fingerprint == value.fingerprint else None
    return StoredVersion(_version_id(value), value, believed)
