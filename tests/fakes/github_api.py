"""A small GitHub REST server for the Actions secrets endpoints, over real HTTP on 127.0.0.1.

No GitHub can run here, so this one serves the four endpoints a write-only github target
uses, and checks what GitHub checks:

* ``GET /repos/{owner}/{repo}/actions/secrets/public-key`` and
  ``GET /repos/{owner}/{repo}/environments/{environment_name}/secrets/public-key``: the
  repository's (or environment's) Curve25519 public key, base64, with its ``key_id``;
* ``PUT .../actions/secrets/{secret_name}`` and ``PUT .../environments/{env}/secrets/{name}``:
  ``encrypted_value`` (base64 of a libsodium sealed box) and ``key_id``; 201 when the secret
  is created, 204 when it is updated. The box is opened with the private key and the
  plaintext kept, so a test sees the secret as the workflows would (:meth:`secret`).

Answers as GitHub does: 401 ``Bad credentials`` without a known token, 403 for a token without
access to the repository (or that may only read), 403 without a ``User-Agent``, 404 for an
unknown repository or environment, 400 for an ``X-GitHub-Api-Version`` it does not serve,
422 for a body without ``encrypted_value`` or ``key_id``, a ``key_id`` that is not the current
one (:meth:`rotate_key` makes the old one stale), a value that is not base64 or a box that does
not open, and a secret name GitHub refuses. :meth:`rate_limit` answers the next requests with
429 and ``Retry-After`` (or 403 with ``x-ratelimit-remaining: 0``, GitHub's primary limit);
:meth:`fail` with a 5xx.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, SealedBox

API_VERSION = "2022-11-28"
_SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ROUTE = re.compile(
    r"^/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/"
    r"(?:actions|environments/(?P<env>[^/]+))/secrets/(?P<name>[^/]+)$"
)


@dataclass
class _Scope:
    """A repository's or an environment's secrets and the key they are sealed with."""

    key: PrivateKey = field(default_factory=PrivateKey.generate)
    key_id: str = field(default_factory=lambda: str(secrets.randbelow(10**18)))
    secrets: dict[str, str] = field(default_factory=dict)
    """Opened values by upper-case name (GitHub's names are case-insensitive)."""
    updated: dict[str, float] = field(default_factory=dict)


@dataclass
class _Repo:
    scope: _Scope = field(default_factory=_Scope)
    environments: dict[str, _Scope] = field(default_factory=dict)


@dataclass(frozen=True)
class _Answer:
    status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


class FakeGitHub:
    """The fake API. :meth:`start` serves it on 127.0.0.1 and sets :attr:`url`.

    ``prefix`` serves it below a path, as GitHub Enterprise Server does (``/api/v3``).
    """

    def __init__(self, *, prefix: str = "") -> None:
        self.prefix = prefix.rstrip("/")
        self._lock = threading.Lock()
        self._repos: dict[str, _Repo] = {}
        self._tokens: dict[str, tuple[set[str] | None, bool]] = {}
        self._faults: list[_Answer] = []
        self._server: ThreadingHTTPServer | None = None
        self.url = ""
        self.requests: list[tuple[str, str, int]] = []
        """(method, path, status) of every request answered, in order."""
        self.received: list[tuple[dict[str, str], bytes]] = []
        """(headers, body) of every request, in order: what went over the wire."""

    # ------------------------------------------------------------------ control

    def start(self) -> FakeGitHub:
        fake = self

        class Handler(_Handler):
            owner = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}{self.prefix}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def add_repo(self, full_name: str, *, environments: tuple[str, ...] = ()) -> None:
        with self._lock:
            repo = self._repos.setdefault(full_name.lower(), _Repo())
            for env in environments:
                repo.environments.setdefault(env.lower(), _Scope())

    def add_token(self, *, repos: set[str] | None = None, write: bool = True) -> str:
        """A new token for ``repos`` (``None``: every repository); ``write=False`` may only read."""
        token = f"ghp_{secrets.token_hex(18)}"
        with self._lock:
            self._tokens[token] = ({r.lower() for r in repos} if repos is not None else None, write)
        return token

    def rotate_key(self, full_name: str, environment: str | None = None) -> None:
        """A new key pair: the old ``key_id`` is refused from now on."""
        with self._lock:
            scope = self._scope(full_name, environment)
            assert scope is not None
            scope.key, scope.key_id = PrivateKey.generate(), str(secrets.randbelow(10**18))

    def secret(self, full_name: str, name: str, environment: str | None = None) -> str | None:
        """The plaintext of a secret, as the workflows of the repository would see it."""
        with self._lock:
            scope = self._scope(full_name, environment)
            return None if scope is None else scope.secrets.get(name.upper())

    def secrets_of(self, full_name: str, environment: str | None = None) -> dict[str, str]:
        with self._lock:
            scope = self._scope(full_name, environment)
            return dict(scope.secrets) if scope is not None else {}

    def set_secret(self, full_name: str, name: str, value: str, environment: str | None = None) -> None:
        """Store a secret as a person would have (it does not go through the API)."""
        with self._lock:
            scope = self._scope(full_name, environment)
            assert scope is not None
            scope.secrets[name.upper()] = value

    def rate_limit(self, times: int = 1, *, retry_after: float = 0.1, primary: bool = False) -> None:
        """Answer the next ``times`` requests as rate limited: 429 with ``Retry-After``, or (with
        ``primary``) 403 with ``x-ratelimit-remaining: 0`` and ``x-ratelimit-reset``."""
        if primary:
            reset = str(int(time.time() + retry_after + 0.999))
            headers = {"x-ratelimit-limit": "5000", "x-ratelimit-remaining": "0", "x-ratelimit-reset": reset}
            answer = _Answer(403, {"message": "API rate limit exceeded for user ID 1."}, headers)
        else:
            body = {"message": "You have exceeded a secondary rate limit. Please wait a few minutes."}
            answer = _Answer(429, body, {"retry-after": f"{retry_after:g}"})
        with self._lock:
            self._faults.extend([answer] * times)

    def fail(self, times: int = 1, status: int = 502) -> None:
        with self._lock:
            self._faults.extend([_Answer(status, {"message": "Server Error"})] * times)

    # ------------------------------------------------------------------ answering

    def answer(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> _Answer:
        with self._lock:
            try:
                answer = self._answer(method, path, headers, raw)
            except _Refused as refused:
                answer = refused.answer
            self.requests.append((method, path, answer.status))
            self.received.append((headers, raw))
            return answer

    def _answer(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> _Answer:
        self._gate(headers)
        match = _ROUTE.match(path[len(self.prefix) :]) if path.startswith(self.prefix + "/") else None
        if match is None:
            raise _Refused(404, "Not Found")
        full = f"{unquote(match['owner'])}/{unquote(match['repo'])}".lower()
        repos, may_write = self._tokens[_bearer(headers.get("authorization", ""))]
        if full in self._repos and repos is not None and full not in repos:
            raise _Refused(403, "Resource not accessible by personal access token")
        scope = self._scope(full, unquote(match["env"]) if match["env"] is not None else None)
        name = unquote(match["name"])
        if scope is None or method not in ("GET", "PUT") or (method == "GET") != (name == "public-key"):
            raise _Refused(404, "Not Found")
        if method == "GET":
            public = base64.b64encode(bytes(scope.key.public_key)).decode()
            return _Answer(200, {"key_id": scope.key_id, "key": public})
        if not may_write:
            raise _Refused(403, "Resource not accessible by personal access token")
        return self._put(scope, name, raw)

    def _gate(self, headers: dict[str, str]) -> None:
        """What GitHub checks of every request before its route: agent, version, limits, token."""
        if not headers.get("user-agent"):
            raise _Refused(403, "Request forbidden by administrative rules. Please make sure your request has a User-Agent header")  # fmt: skip
        version = headers.get("x-github-api-version")
        if version is not None and version != API_VERSION:
            raise _Refused(400, f"API version {version} is not supported.")
        if self._faults:
            raise _Refused.of(self._faults.pop(0))
        if _bearer(headers.get("authorization", "")) not in self._tokens:
            raise _Refused(401, "Bad credentials")

    def _put(self, scope: _Scope, name: str, raw: bytes) -> _Answer:
        if not _SECRET_NAME.match(name) or name.upper().startswith("GITHUB_"):
            raise _Refused(422, f"Secret names can only contain alphanumeric characters or underscores, and must not start with a number or GITHUB_: {name}")  # fmt: skip
        body = _json_object(raw)
        for required in ("encrypted_value", "key_id"):
            if not isinstance(body.get(required), str):
                raise _Refused(422, f'Invalid request.\n\n"{required}" wasn\'t supplied.')
        if body["key_id"] != scope.key_id:
            raise _Refused(422, "Bad request: key_id does not match the current public key.")
        try:
            sealed = base64.b64decode(body["encrypted_value"], validate=True)
            plain = SealedBox(scope.key).decrypt(sealed).decode()
        except (binascii.Error, CryptoError, UnicodeDecodeError):
            raise _Refused(422, "Bad request: encrypted_value could not be decrypted.") from None
        created = name.upper() not in scope.secrets
        scope.secrets[name.upper()] = plain
        scope.updated[name.upper()] = time.time()
        return _Answer(201, {}) if created else _Answer(204)

    def _scope(self, full_name: str, environment: str | None) -> _Scope | None:
        repo = self._repos.get(full_name.lower())
        if repo is None:
            return None
        if environment is None:
            return repo.scope
        return repo.environments.get(environment.lower())


class _Refused(Exception):
    """An error answer, raised from wherever a check fails."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.answer = _Answer(
            status, {"message": message, "documentation_url": "https://docs.github.com/rest"}
        )

    @classmethod
    def of(cls, answer: _Answer) -> _Refused:
        refused = cls(answer.status, "")
        refused.answer = answer
        return refused


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise _Refused(400, "Problems parsing JSON")
    return body


def _bearer(value: str) -> str:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() in ("bearer", "token") else ""


class _Handler(BaseHTTPRequestHandler):
    owner: FakeGitHub
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._serve("GET")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        answer = self.owner.answer(method, urlsplit(self.path).path, headers, raw)
        payload = b"" if answer.body is None else json.dumps(answer.body).encode()
        self.send_response(answer.status)
        for key, value in answer.headers.items():
            self.send_header(key, value)
        self.send_header("x-github-api-version-selected", API_VERSION)
        if answer.body is not None:
            self.send_header("content-type", "application/json; charset=utf-8")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads :attr:`FakeGitHub.requests` instead."""
