"""A small Secret Manager v1 server speaking the real gRPC protocol.

No emulator of GCP Secret Manager exists, so this one implements the methods the
rotator uses, with the real request and response messages of the client
library, and answers the way the service documents:

* NOT_FOUND, ALREADY_EXISTS, INVALID_ARGUMENT (bad alias, annotations over 16 KiB);
* FAILED_PRECONDITION for a disabled or destroyed version, and for an etag
  mismatch (the service's documented code; ``etag_mismatch`` can switch it to
  ABORTED, which AIP-154 prescribes);
* a secret's etag changes on every UpdateSecret, not on AddSecretVersion;
* PERMISSION_DENIED for secrets in :attr:`denied_secrets` or callers (the
  ``x-fake-caller`` metadata header) in :attr:`denied_callers`;
* :meth:`inject` makes the next calls fail with a given code (UNAVAILABLE...).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
from google.auth.credentials import AnonymousCredentials
from google.cloud import secretmanager_v1 as sm
from google.cloud.secretmanager_v1.services.secret_manager_service.transports import (
    SecretManagerServiceGrpcTransport,
)
from google.iam.v1 import iam_policy_pb2
from google.protobuf import empty_pb2

_SERVICE = "google.cloud.secretmanager.v1.SecretManagerService"
_ANNOTATIONS_MAX = 16 * 1024
CALLER_HEADER = "x-fake-caller"
State = sm.SecretVersion.State


@dataclass
class _Version:
    number: int
    data: bytes
    created: datetime
    state: int = State.ENABLED
    etag: str = ""


@dataclass
class _Secret:
    secret: sm.Secret
    versions: list[_Version] = field(default_factory=list)


class _Abort(Exception):
    """A gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class FakeSecretManager:
    """The fake service. :meth:`start` serves it on 127.0.0.1 and sets :attr:`address`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: dict[str, _Secret] = {}
        self._etags = itertools.count(1)
        self._faults: list[grpc.StatusCode] = []
        self._server: grpc.Server | None = None
        self._clients: dict[str | None, sm.SecretManagerServiceClient] = {}
        self.address = ""
        self.denied_secrets: set[str] = set()
        """Full names (``projects/p/secrets/s``) every caller is denied."""
        self.denied_callers: set[str] = set()
        """Values of the ``x-fake-caller`` header that are denied everything."""
        self.etag_mismatch = grpc.StatusCode.FAILED_PRECONDITION
        self.calls: list[str] = []
        """Method names in the order they were called (failed ones included)."""

    # ------------------------------------------------------------------ control

    def start(self) -> FakeSecretManager:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self._server.add_generic_rpc_handlers((self._handler(),))
        port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        self.address = f"127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        for client in self._clients.values():
            client.transport.close()  # type: ignore[no-untyped-call]
        if self._server is not None:
            self._server.stop(grace=None)

    def inject(self, code: grpc.StatusCode, times: int = 1) -> None:
        """Answer the next ``times`` calls with ``code``."""
        with self._lock:
            self._faults.extend([code] * times)

    def heal(self) -> None:
        """Drop the faults :meth:`inject` queued and not yet answered."""
        with self._lock:
            self._faults.clear()

    def client(self, caller: str | None = None) -> Any:
        """A real ``SecretManagerServiceClient`` for this server (one per caller, closed
        by :meth:`stop`). Typed ``Any``: its stubs refuse the plain dicts it accepts.

        With ``caller`` set, every call carries ``x-fake-caller: caller``.
        """
        if caller not in self._clients:
            self._clients[caller] = self._new_client(caller)
        return self._clients[caller]

    def _new_client(self, caller: str | None) -> sm.SecretManagerServiceClient:
        channel = grpc.insecure_channel(self.address)
        if caller is not None:
            channel = grpc.intercept_channel(channel, _Caller(caller))
        transport = SecretManagerServiceGrpcTransport(
            channel=channel,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        )
        return sm.SecretManagerServiceClient(transport=transport)

    # ------------------------------------------------------------------ plumbing

    def _handler(self) -> grpc.GenericRpcHandler:
        t = sm.types
        table: dict[str, tuple[Callable[..., Any], Any, Callable[[Any], bytes]]] = {
            "CreateSecret": (self._create, t.CreateSecretRequest, t.Secret.serialize),
            "GetSecret": (self._get, t.GetSecretRequest, t.Secret.serialize),
            "UpdateSecret": (self._update, t.UpdateSecretRequest, t.Secret.serialize),
            "DeleteSecret": (self._delete, t.DeleteSecretRequest, _raw),
            "AddSecretVersion": (self._add, t.AddSecretVersionRequest, _ver),
            "GetSecretVersion": (self._get_version, t.GetSecretVersionRequest, _ver),
            "AccessSecretVersion": (
                self._access,
                t.AccessSecretVersionRequest,
                t.AccessSecretVersionResponse.serialize,
            ),
            "ListSecretVersions": (
                self._list,
                t.ListSecretVersionsRequest,
                t.ListSecretVersionsResponse.serialize,
            ),
            "DisableSecretVersion": (self._disable, t.DisableSecretVersionRequest, _ver),
            "DestroySecretVersion": (self._destroy, t.DestroySecretVersionRequest, _ver),
            "TestIamPermissions": (
                self._test_iam,
                iam_policy_pb2.TestIamPermissionsRequest,
                _raw,
            ),
        }
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                self._wrap(name, fn),
                request_deserializer=getattr(rtype, "deserialize", None) or rtype.FromString,
                response_serializer=ser,
            )
            for name, (fn, rtype, ser) in table.items()
        }
        return grpc.method_handlers_generic_handler(_SERVICE, handlers)

    def _wrap(self, method: str, fn: Callable[..., Any]) -> Callable[[Any, Any], Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                with self._lock:
                    return self._dispatch(method, fn, request, context)
            except _Abort as exc:
                context.abort(exc.code, str(exc))
                raise  # abort() raises; this only tells the reader

        return call

    def _dispatch(
        self, method: str, fn: Callable[..., Any], request: Any, context: grpc.ServicerContext
    ) -> Any:
        self.calls.append(method)
        if self._faults:
            raise _Abort(self._faults.pop(0), f"injected fault in {method}")
        caller = dict(context.invocation_metadata()).get(CALLER_HEADER)
        target = _secret_of(_name_of(request))
        denied = caller in self.denied_callers or target in self.denied_secrets
        if method == "TestIamPermissions":  # answers with the subset granted, never 403
            return fn(request, denied)
        if denied:
            raise _Abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"Permission denied on resource '{target}' (or it may not exist).",
            )
        return fn(request)

    def _secret(self, name: str) -> _Secret:
        found = self._secrets.get(_secret_of(name))
        if found is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"Secret [{_secret_of(name)}] not found.")
        return found

    def _version(self, name: str) -> tuple[_Secret, _Version]:
        entry = self._secret(name)
        ref = name.rsplit("/versions/", 1)[1]
        if ref == "latest" and entry.versions:
            return entry, entry.versions[-1]
        number = int(ref) if ref.isdigit() else entry.secret.version_aliases.get(ref, 0)
        for version in entry.versions:
            if version.number == number:
                return entry, version
        raise _Abort(grpc.StatusCode.NOT_FOUND, f"Secret Version [{name}] not found.")

    def _etag(self) -> str:
        return f'"{next(self._etags):012x}"'

    def _check_etag(self, given: str, current: str) -> None:
        if given and given != current:
            raise _Abort(self.etag_mismatch, "The etag provided in the request does not match.")

    def _proto(self, entry: _Secret, v: _Version) -> sm.SecretVersion:
        return sm.SecretVersion(
            name=f"{entry.secret.name}/versions/{v.number}",
            create_time=v.created,
            state=v.state,
            etag=v.etag,
        )

    # ------------------------------------------------------------------ methods

    def _create(self, request: sm.CreateSecretRequest) -> sm.Secret:
        name = f"{request.parent}/secrets/{request.secret_id}"
        if name in self._secrets:
            raise _Abort(grpc.StatusCode.ALREADY_EXISTS, f"Secret [{name}] already exists.")
        secret = sm.Secret(request.secret, name=name, etag=self._etag())
        secret.create_time = datetime.now(UTC)
        self._validate(secret)
        self._secrets[name] = _Secret(secret)
        return secret

    def _get(self, request: sm.GetSecretRequest) -> sm.Secret:
        return self._secret(request.name).secret

    def _update(self, request: sm.UpdateSecretRequest) -> sm.Secret:
        entry = self._secret(request.secret.name)
        self._check_etag(request.secret.etag, entry.secret.etag)
        updated = sm.Secret(entry.secret)
        for path in request.update_mask.paths:
            if path not in ("labels", "annotations", "version_aliases"):
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"cannot update {path!r}")
            getattr(updated, path).clear()
            getattr(updated, path).update(getattr(request.secret, path))
        self._validate(updated, entry)
        updated.etag = self._etag()
        entry.secret = updated
        return updated

    def _validate(self, secret: sm.Secret, entry: _Secret | None = None) -> None:
        numbers = {v.number for v in entry.versions} if entry else set()
        for alias, number in secret.version_aliases.items():
            if alias in ("latest", "NEW") or number not in numbers:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad version alias {alias!r}")
        size = sum(len(k.encode()) + len(v.encode()) for k, v in secret.annotations.items())
        if size >= _ANNOTATIONS_MAX:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "annotations exceed 16 KiB")

    def _delete(self, request: sm.DeleteSecretRequest) -> empty_pb2.Empty:
        self._check_etag(request.etag, self._secret(request.name).secret.etag)
        del self._secrets[_secret_of(request.name)]
        return empty_pb2.Empty()

    def _add(self, request: sm.AddSecretVersionRequest) -> sm.SecretVersion:
        entry = self._secret(request.parent)
        number = entry.versions[-1].number + 1 if entry.versions else 1
        version = _Version(number, request.payload.data, datetime.now(UTC), etag=self._etag())
        entry.versions.append(version)
        return self._proto(entry, version)

    def _get_version(self, request: sm.GetSecretVersionRequest) -> sm.SecretVersion:
        return self._proto(*self._version(request.name))

    def _access(self, request: sm.AccessSecretVersionRequest) -> sm.AccessSecretVersionResponse:
        entry, version = self._version(request.name)
        if version.state != State.ENABLED:
            raise _Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{entry.secret.name}/versions/{version.number} is in {State(version.state).name} state.",
            )
        return sm.AccessSecretVersionResponse(
            name=f"{entry.secret.name}/versions/{version.number}",
            payload=sm.SecretPayload(data=version.data),
        )

    def _list(self, request: sm.ListSecretVersionsRequest) -> sm.ListSecretVersionsResponse:
        entry = self._secret(request.parent)
        versions = [self._proto(entry, v) for v in reversed(entry.versions)]  # newest first
        return sm.ListSecretVersionsResponse(versions=versions, total_size=len(versions))

    def _set_state(self, name: str, etag: str, state: int) -> sm.SecretVersion:
        entry, version = self._version(name)
        self._check_etag(etag, version.etag)
        if version.state == State.DESTROYED:
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, f"{name} is DESTROYED.")
        version.state, version.etag = state, self._etag()
        if state == State.DESTROYED:
            version.data = b""
        return self._proto(entry, version)

    def _disable(self, request: sm.DisableSecretVersionRequest) -> sm.SecretVersion:
        return self._set_state(request.name, request.etag, State.DISABLED)

    def _destroy(self, request: sm.DestroySecretVersionRequest) -> sm.SecretVersion:
        return self._set_state(request.name, request.etag, State.DESTROYED)

    def _test_iam(
        self, request: iam_policy_pb2.TestIamPermissionsRequest, denied: bool
    ) -> iam_policy_pb2.TestIamPermissionsResponse:
        self._secret(request.resource)
        granted = [] if denied else list(request.permissions)
        return iam_policy_pb2.TestIamPermissionsResponse(permissions=granted)


class _Caller(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds the ``x-fake-caller`` header to every call, to play another identity."""

    def __init__(self, caller: str) -> None:
        self._caller = caller

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = [*(details.metadata or ()), (CALLER_HEADER, self._caller)]
        return continuation(details._replace(metadata=metadata), request)


def _name_of(request: Any) -> str:
    if getattr(request, "secret_id", ""):
        return f"{request.parent}/secrets/{request.secret_id}"
    for attr in ("name", "parent", "resource"):
        value = getattr(request, attr, "")
        if value:
            return str(value)
    secret = getattr(request, "secret", None)
    return str(getattr(secret, "name", "")) if secret is not None else ""


def _secret_of(name: str) -> str:
    """``projects/p/secrets/s[/versions/v]`` -> ``projects/p/secrets/s``."""
    return "/".join(name.split("/")[:4])


def _ver(message: sm.SecretVersion) -> bytes:
    return bytes(sm.SecretVersion.serialize(message))


def _raw(message: Any) -> bytes:
    return bytes(message.SerializeToString())


def serve() -> Iterator[FakeSecretManager]:
    """Start a fake server, yield it, stop it (for fixtures)."""
    server = FakeSecretManager().start()
    try:
        yield server
    finally:
        server.stop()
