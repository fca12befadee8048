"""A small Kubernetes API server over real HTTP on 127.0.0.1, for the official client.

No API server can run here, so this one serves the few resources the rotator touches
(core/v1 Secrets; apps/v1 Deployments, StatefulSets and DaemonSets; External Secrets'
ExternalSecrets in ``external-secrets.io`` ``v1`` and/or ``v1beta1``), and checks what the
real one checks:

* authentication: ``Authorization: Bearer <token>`` of a token it knows, else 401;
* RBAC per token (:meth:`FakeKubeApi.grant`): a rule names verbs, a resource and optionally
  ``resourceNames``; a rule with names never grants ``create`` (the name is not known to the
  authorizer then), as in Kubernetes. Denied requests get the real 403 message;
* ``metadata.resourceVersion`` on every object, from one counter, bumped on every write that
  changes something (a no-op patch writes nothing); a PUT or a patch carrying a stale
  ``resourceVersion`` is 409 Conflict; creating an existing name is 409 AlreadyExists;
* JSON merge patch (RFC 7386: ``null`` deletes) for every resource; strategic merge patch for
  built-in kinds, on maps (lists in such a patch answer 500: the fake does not implement
  their merge keys, so a test using them must fail loudly), and 415 for custom resources, as
  the real server answers; a dict body sent as JSON patch is 400;
* ``metadata.generation`` on workloads and custom resources, bumped when ``spec`` changes;
  their ``status`` cannot be written through the main endpoint;
* Secrets: data values must be base64, keys ``[-._a-zA-Z0-9]+``, ``stringData`` is merged into
  ``data``, ``immutable`` data cannot change (422);
* ``dryRun=All`` runs every check and stores nothing; another value is 400;
* a 404 ``Status`` for a missing object, and for a version of a group that is not served.

Controllers (``tests/fakes/kube_controllers.py``) move workload rollouts and ExternalSecret
syncs over time. Every ``kubectl.kubernetes.io/restartedAt`` value written is recorded in
:attr:`FakeKubeApi.restarts`, per workload, so tests count restarts.
"""

from __future__ import annotations

import base64
import binascii
import copy
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from tests.fakes.kube_controllers import Controllers

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
ESO_GROUP = "external-secrets.io"
_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_CORE = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?$")
_GROUPED = re.compile(
    r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?$"
)
_GROUP = re.compile(r"^/apis/(?P<group>[^/]+)/?$")
_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


@dataclass(frozen=True)
class Kind:
    """A resource type the fake serves."""

    group: str
    plural: str
    kind: str
    versions: tuple[str, ...]
    builtin: bool
    spec_status: bool  # has spec, status (a subresource) and generation


KINDS = {
    ("", "secrets"): Kind("", "secrets", "Secret", ("v1",), builtin=True, spec_status=False),
    ("apps", "deployments"): Kind("apps", "deployments", "Deployment", ("v1",), True, True),
    ("apps", "statefulsets"): Kind("apps", "statefulsets", "StatefulSet", ("v1",), True, True),
    ("apps", "daemonsets"): Kind("apps", "daemonsets", "DaemonSet", ("v1",), True, True),
    (ESO_GROUP, "externalsecrets"): Kind(
        ESO_GROUP, "externalsecrets", "ExternalSecret", ("v1", "v1beta1"), False, True
    ),
}
PLURAL_OF = {k.kind: k.plural for k in KINDS.values()}


@dataclass(frozen=True)
class Rule:
    """One RBAC rule: ``verbs`` on ``resource`` (``secrets``, ``deployments.apps``...) in
    ``namespace``, limited to ``names`` when given."""

    verbs: frozenset[str]
    resource: str
    namespace: str
    names: frozenset[str] | None = None

    def allows(self, verb: str, resource: str, namespace: str, name: str) -> bool:
        if verb not in self.verbs or resource != self.resource or namespace != self.namespace:
            return False
        if self.names is None:
            return True
        return bool(name) and name in self.names  # create has no name to match: never granted


class ApiError(Exception):
    """An answer with a ``Status`` body."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.details = code, reason, details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": str(self),
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


@dataclass
class Request:
    """One request as the fake saw it (for tests that check what was sent)."""

    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    user: str | None
    code: int = 0
    at: float = field(default_factory=time.monotonic)
    """When it arrived (``time.monotonic``)."""


@dataclass
class _Faults:
    answers: list[ApiError] = field(default_factory=list)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _resource_name(kind: Kind) -> str:
    return f"{kind.plural}.{kind.group}" if kind.group else kind.plural


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _check_strategic(patch: Any, where: str = "") -> None:
    """Raise unless ``patch`` uses only what this fake's strategic merge implements (maps)."""
    if isinstance(patch, list):
        raise ApiError(
            500, "InternalError", f"fake API server: strategic merge of a list ({where}) is not implemented"
        )
    if isinstance(patch, dict):
        for key, value in patch.items():
            if key.startswith("$"):
                raise ApiError(500, "InternalError", f"fake API server: directive {key} is not implemented")
            _check_strategic(value, f"{where}.{key}")


class FakeKubeApi:
    """The fake API server. :meth:`start` serves it on 127.0.0.1 and sets :attr:`url`."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._objects: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self._revisions = itertools.count(1)
        self._tokens: dict[str, tuple[str, list[Rule] | None]] = {}
        self._faults = _Faults()
        self._server: ThreadingHTTPServer | None = None
        self.url = ""
        self.eso_versions: tuple[str, ...] = ("v1",)
        """The ExternalSecret versions served (External Secrets 0.17+ serves only v1)."""
        self.restarts: dict[tuple[str, str, str], list[str]] = {}
        """``(kind, namespace, name)`` -> every restartedAt value written, in order."""
        self.restart_annotations: dict[tuple[str, str, str], list[dict[str, str]]] = {}
        """The pod template's annotations as each restart left them, in order."""
        self.requests: list[Request] = []
        self.controllers = Controllers(self)

    # ------------------------------------------------------------------ control

    def start(self) -> FakeKubeApi:
        fake = self

        class Handler(_Handler):
            api = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fake-kube-api", daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.controllers.start()
        return self

    def stop(self) -> None:
        self.controllers.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def add_token(self, token: str, user: str, rules: list[Rule] | None = None) -> None:
        """Accept ``token`` as ``user``; ``rules`` None means every verb on everything."""
        with self.lock:
            self._tokens[token] = (user, rules)

    def grant(self, token: str, rule: Rule) -> None:
        with self.lock:
            user, rules = self._tokens[token]
            self._tokens[token] = (user, [*(rules or []), rule])

    def kubeconfig(self, path: Path, token: str, *, namespace: str = "default") -> Path:
        """Write a kubeconfig for this server and ``token`` to ``path``."""
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "rotator", "user": {"token": token}}],
            "contexts": [
                {"name": "fake", "context": {"cluster": "fake", "user": "rotator", "namespace": namespace}}
            ],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(doc))
        return path

    def inject(
        self, code: int, times: int = 1, *, reason: str | None = None, message: str = "injected fault"
    ) -> None:
        """Answer the next ``times`` requests with ``code`` (e.g. 503) and a Status carrying
        ``reason`` and ``message``."""
        reason = reason or {503: "ServiceUnavailable", 422: "Invalid"}.get(code, "InternalError")
        with self.lock:
            self._faults.answers.extend(ApiError(code, reason, message) for _ in range(times))

    # ------------------------------------------------------------------ objects, as an operator would

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        k = self._kind_of(kind)
        with self.lock:
            found = self._objects.get((k.group, k.plural, namespace, name))
            return copy.deepcopy(found) if found is not None else None

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace ``obj`` as is (status included), unconditionally."""
        k = self._kind_of(obj["kind"])
        meta = obj.setdefault("metadata", {})
        with self.lock:
            key = (k.group, k.plural, meta["namespace"], meta["name"])
            old = self._objects.get(key)
            if k.kind == "Secret":
                self._normalize_secret(obj, old)
            self._stamp_meta(obj, old, k)
            self._objects[key] = obj
            return copy.deepcopy(obj)

    def update_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Replace an object's status (what a controller does), bumping its resourceVersion."""
        k = self._kind_of(kind)
        with self.lock:
            obj = self._objects.get((k.group, k.plural, namespace, name))
            if obj is None:
                return
            if obj.get("status") != status:
                obj["status"] = copy.deepcopy(status)
                obj["metadata"]["resourceVersion"] = str(next(self._revisions))

    def delete(self, kind: str, namespace: str, name: str) -> None:
        k = self._kind_of(kind)
        with self.lock:
            self._objects.pop((k.group, k.plural, namespace, name), None)

    def objects(self, kind: str) -> Iterator[dict[str, Any]]:
        k = self._kind_of(kind)
        with self.lock:
            found = [
                copy.deepcopy(o) for (g, p, _, _), o in self._objects.items() if (g, p) == (k.group, k.plural)
            ]
        yield from found

    @staticmethod
    def _kind_of(kind: str) -> Kind:
        return KINDS[next(key for key, k in KINDS.items() if k.kind == kind)]

    # ------------------------------------------------------------------ the API

    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        parts = urlsplit(raw_path)
        query = parse_qs(parts.query)
        record = Request(method, parts.path, query, headers.get("content-type", ""), None)
        with self.lock:
            self.requests.append(record)
        try:
            user, rules = self._authenticate(headers.get("authorization", ""))
            record.user = user
            self._injected_fault()
            code, answer = self._route(method, parts.path, query, headers, body, user, rules)
        except ApiError as exc:
            code, answer = exc.code, exc.status()
        record.code = code
        return code, answer

    def _injected_fault(self) -> None:
        with self.lock:
            if self._faults.answers:
                raise self._faults.answers.pop(0)

    def _authenticate(self, header: str) -> tuple[str, list[Rule] | None]:
        token = header[7:] if header.startswith("Bearer ") else None
        with self.lock:
            found = self._tokens.get(token or "")
        if found is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        return found

    def _route(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: dict[str, str],
        body: bytes,
        user: str,
        rules: list[Rule] | None,
    ) -> tuple[int, Any]:
        if path in ("/apis", "/apis/") and method == "GET":
            groups = [self._discovery(g)[1] for g in ("apps", ESO_GROUP) if g == "apps" or self.eso_versions]
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        group_match = _GROUP.match(path)
        if group_match and method == "GET":
            return self._discovery(group_match["group"])
        match = _CORE.match(path)
        group, version = "", "v1"
        if match is None:
            match = _GROUPED.match(path)
            if match is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            group, version = match["group"], match["version"]
        kind = KINDS.get((group, match["plural"]))
        served = self.eso_versions if group == ESO_GROUP else (kind.versions if kind else ())
        if kind is None or version not in served:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        ns, name = match["ns"], match["name"]
        verb = _VERBS.get(method, "")
        if method == "GET" and name is None:
            verb = "list"
        self._authorize(user, rules, verb, kind, ns, name or "")
        dry = query.get("dryRun", [])
        if dry and dry != ["All"]:
            raise ApiError(400, "BadRequest", f"Invalid dryRun value: {dry}")
        request = _Call(kind, version, ns, name, bool(dry), headers.get("content-type", ""), body)
        return self._dispatch(method, request)

    def _discovery(self, group: str) -> tuple[int, Any]:
        if group == ESO_GROUP and self.eso_versions:
            versions = [{"groupVersion": f"{group}/{v}", "version": v} for v in self.eso_versions]
            return 200, {
                "kind": "APIGroup",
                "apiVersion": "v1",
                "name": group,
                "versions": versions,
                "preferredVersion": versions[0],
            }
        if group == "apps":
            version = {"groupVersion": "apps/v1", "version": "v1"}
            return 200, {
                "kind": "APIGroup",
                "apiVersion": "v1",
                "name": group,
                "versions": [version],
                "preferredVersion": version,
            }
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    def _authorize(
        self, user: str, rules: list[Rule] | None, verb: str, kind: Kind, ns: str, name: str
    ) -> None:
        if rules is None or any(r.allows(verb, _resource_name(kind), ns, name) for r in rules):
            return
        what = f'{_resource_name(kind)} "{name}"' if name else _resource_name(kind)
        raise ApiError(
            403,
            "Forbidden",
            f'{what} is forbidden: User "{user}" cannot {verb} resource "{kind.plural}" in API group '
            f'"{kind.group}" in the namespace "{ns}"',
            {"name": name, "group": kind.group, "kind": kind.plural},
        )

    def _dispatch(self, method: str, call: _Call) -> tuple[int, Any]:
        if call.name is None:
            if method == "GET":
                with self.lock:
                    items = [
                        self._shown(o, call)
                        for (g, p, n, _), o in self._objects.items()
                        if (g, p, n) == (call.kind.group, call.kind.plural, call.ns)
                    ]
                return 200, {
                    "kind": f"{call.kind.kind}List",
                    "apiVersion": self._api_version(call),
                    "metadata": {},
                    "items": items,
                }
            if method == "POST":
                return self._create(call)
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on a collection")
        handlers = {"GET": self._read, "PUT": self._replace, "PATCH": self._patch, "DELETE": self._delete}
        if method not in handlers:
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported")
        return handlers[method](call)

    # ------------------------------------------------------------------ verbs

    def _read(self, call: _Call) -> tuple[int, Any]:
        with self.lock:
            return 200, self._shown(self._existing(call), call)

    def _create(self, call: _Call) -> tuple[int, Any]:
        obj = call.json()
        meta = obj.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            raise ApiError(
                422,
                "Invalid",
                f"{call.kind.kind} is invalid: metadata.name: Required value",
                _causes("metadata.name"),
            )
        if meta.get("namespace", call.ns) != call.ns:
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        meta["namespace"] = call.ns
        for key in ("resourceVersion", "uid", "creationTimestamp", "generation"):
            meta.pop(key, None)
        with self.lock:
            key = call.key(name)
            if key in self._objects:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{_resource_name(call.kind)} "{name}" already exists',
                    {"name": name, "kind": call.kind.plural},
                )
            if call.kind.spec_status:
                obj.pop("status", None)
            if call.kind.kind == "Secret":
                self._normalize_secret(obj, None)
            self._stamp_meta(obj, None, call.kind)
            if not call.dry_run:
                self._objects[key] = obj
                self._after_write(call.kind, None, obj)
            return 201, self._shown(obj, call)

    def _replace(self, call: _Call) -> tuple[int, Any]:
        obj = call.json()
        meta = obj.setdefault("metadata", {})
        if meta.get("name") != call.name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
        with self.lock:
            old = self._existing(call)
            wanted = meta.get("resourceVersion")
            if wanted and wanted != old["metadata"]["resourceVersion"]:
                raise self._conflict(call)
            return self._write(call, old, obj)

    def _patch(self, call: _Call) -> tuple[int, Any]:
        patch = call.json_any()
        ctype = call.content_type.split(";")[0].strip()
        if ctype == "application/json-patch+json":
            if not isinstance(patch, list):
                raise ApiError(
                    400, "BadRequest", "json: cannot unmarshal object into Go value of type jsonpatch.Patch"
                )
            raise ApiError(500, "InternalError", "fake API server: JSON patch is not implemented")
        if ctype == "application/strategic-merge-patch+json":
            if not call.kind.builtin:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                )
            _check_strategic(patch)
        elif ctype != "application/merge-patch+json":
            raise ApiError(
                415, "UnsupportedMediaType", f"the body of the request was in an unknown format - {ctype}"
            )
        if not isinstance(patch, dict):
            raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
        with self.lock:
            old = self._existing(call)
            merged = merge_patch(copy.deepcopy(old), patch)
            wanted = (patch.get("metadata") or {}).get("resourceVersion")
            if wanted and wanted != old["metadata"]["resourceVersion"]:
                raise self._conflict(call)
            return self._write(call, old, merged)

    def _delete(self, call: _Call) -> tuple[int, Any]:
        with self.lock:
            self._existing(call)
            if not call.dry_run:
                del self._objects[call.key(call.name or "")]
        return 200, {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": call.name, "kind": call.kind.plural},
        }

    def _write(self, call: _Call, old: dict[str, Any], new: dict[str, Any]) -> tuple[int, Any]:
        """Store ``new`` in place of ``old`` unless nothing changed (the caller holds the lock)."""
        meta = new.setdefault("metadata", {})
        if meta.get("name") != old["metadata"]["name"] or meta.get("namespace", call.ns) != call.ns:
            raise ApiError(400, "BadRequest", "metadata.name and metadata.namespace cannot be changed")
        for key in ("uid", "creationTimestamp", "generation", "resourceVersion"):
            if key in old["metadata"]:
                meta[key] = old["metadata"][key]
        meta["namespace"] = call.ns
        if call.kind.spec_status:
            new["status"] = copy.deepcopy(old.get("status", {}))
        if call.kind.kind == "Secret":
            self._normalize_secret(new, old)
        if new == old:
            return 200, self._shown(old, call)
        self._stamp_meta(new, old, call.kind)
        if not call.dry_run:
            self._objects[call.key(call.name or "")] = new
            self._after_write(call.kind, old, new)
        return 200, self._shown(new, call)

    # ------------------------------------------------------------------ rules

    def _stamp_meta(self, obj: dict[str, Any], old: dict[str, Any] | None, kind: Kind) -> None:
        meta = obj["metadata"]
        meta["resourceVersion"] = str(next(self._revisions))
        if old is None:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            if kind.spec_status:
                meta["generation"] = 1
        elif kind.spec_status and obj.get("spec") != old.get("spec"):
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1

    def _normalize_secret(self, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        data = dict(obj.get("data") or {})
        for key, value in (obj.pop("stringData", None) or {}).items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        bad = [k for k in data if not _KEY.match(k)]
        if bad:
            raise ApiError(
                422,
                "Invalid",
                f'Secret "{obj["metadata"].get("name")}" is invalid: data: Invalid key',
                _causes(*(f"data[{k}]" for k in bad)),
            )
        for key, value in data.items():
            try:
                base64.b64decode(str(value), validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(400, "BadRequest", f"illegal base64 data in data[{key}]") from None
        if data:
            obj["data"] = data
        else:
            obj.pop("data", None)
        obj.setdefault("type", "Opaque")
        if old is not None and old.get("immutable") and (old.get("data") or {}) != (obj.get("data") or {}):
            raise ApiError(
                422,
                "Invalid",
                f'Secret "{obj["metadata"]["name"]}" is invalid: data: Forbidden: field is immutable when `immutable` is set',
                _causes("data"),
            )

    def _after_write(self, kind: Kind, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
        if kind.kind not in ("Deployment", "StatefulSet", "DaemonSet"):
            return
        before = _restarted_at(old) if old is not None else None
        after = _restarted_at(new)
        if after is not None and after != before:
            meta = new["metadata"]
            key = (kind.kind, meta["namespace"], meta["name"])
            self.restarts.setdefault(key, []).append(after)
            template = new["spec"]["template"]["metadata"]["annotations"]
            self.restart_annotations.setdefault(key, []).append(dict(template))

    def _existing(self, call: _Call) -> dict[str, Any]:
        found = self._objects.get(call.key(call.name or ""))
        if found is None:
            raise ApiError(
                404,
                "NotFound",
                f'{_resource_name(call.kind)} "{call.name}" not found',
                {"name": call.name, "group": call.kind.group, "kind": call.kind.plural},
            )
        return found

    def _conflict(self, call: _Call) -> ApiError:
        return ApiError(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {_resource_name(call.kind)} "{call.name}": the object has been modified; '
            "please apply your changes to the latest version and try again",
            {"name": call.name, "group": call.kind.group, "kind": call.kind.plural},
        )

    def _api_version(self, call: _Call) -> str:
        return f"{call.kind.group}/{call.version}" if call.kind.group else call.version

    def _shown(self, obj: dict[str, Any], call: _Call) -> dict[str, Any]:
        shown = copy.deepcopy(obj)
        shown["apiVersion"] = self._api_version(call)
        shown["kind"] = call.kind.kind
        return shown


def _restarted_at(obj: dict[str, Any]) -> str | None:
    annotations = (((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}).get(
        "annotations"
    ) or {}
    value = annotations.get(RESTARTED_AT)
    return str(value) if value is not None else None


def _causes(*fields: str) -> dict[str, Any]:
    return {"causes": [{"reason": "FieldValueInvalid", "field": f} for f in fields]}


@dataclass
class _Call:
    kind: Kind
    version: str
    ns: str
    name: str | None
    dry_run: bool
    content_type: str
    body: bytes

    def key(self, name: str) -> tuple[str, str, str, str]:
        return (self.kind.group, self.kind.plural, self.ns, name)

    def json_any(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            raise ApiError(400, "BadRequest", "the request body is not JSON") from None

    def json(self) -> dict[str, Any]:
        found = self.json_any()
        if not isinstance(found, dict):
            raise ApiError(400, "BadRequest", "the request body is not a JSON object")
        return found


class _Handler(BaseHTTPRequestHandler):
    api: FakeKubeApi
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        code, answer = self.api.handle(self.command, self.path, headers, body)
        payload = json.dumps(answer).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve  # noqa: N815 - the names http.server calls

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read :attr:`FakeKubeApi.requests` instead."""


def serve() -> Iterator[FakeKubeApi]:
    """Start a fake API server, yield it, stop it (for fixtures)."""
    server = FakeKubeApi().start()
    try:
        yield server
    finally:
        server.stop()
