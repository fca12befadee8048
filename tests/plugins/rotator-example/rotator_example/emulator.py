"""The example vendor, in process: a loopback HTTP server for the plugin's tests.

with ExampleVendor() as vendor:
    vendor.url, vendor.admin_token   # point an ``example`` issuer here
    vendor.use(value)                # a consumer's call with a key (as /v1/ping)
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

MAX_ACTIVE = 2


@dataclass
class _Key:
    id: str
    value: str = field(repr=False)
    name: str
    created_at: datetime
    status: str = "active"
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    uses: list[datetime] = field(default_factory=list)

    def listing(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "prefix": self.value[:12],
            "name": self.name,
            "status": self.status,
            "created_at": self.created_at.isoformat(),
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


class ExampleVendor:
    """The vendor's state and its server; thread-safe."""

    def __init__(self) -> None:
        self.admin_token = "exadmin_" + secrets.token_hex(16)
        self.keys: dict[str, _Key] = {}
        self.lock = threading.Lock()
        self.minted = 0
        self.fail_next_mint_with: int | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> ExampleVendor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def seed(self, name: str = "seed") -> str:
        """A key made outside the rotator (the one in use before the first rotation)."""
        with self.lock:
            return self._mint(name).value

    def use(self, value: str) -> bool:
        """A consumer's request with ``value``: True when the vendor accepts it."""
        with self.lock:
            key = self._by_value(value)
            if key is None:
                return False
            now = datetime.now(UTC)
            key.last_used_at = now
            key.uses.append(now)
            return True

    def active_values(self) -> set[str]:
        with self.lock:
            return {k.value for k in self.keys.values() if k.status == "active"}

    def _by_value(self, value: str) -> _Key | None:
        return next((k for k in self.keys.values() if k.value == value and k.status == "active"), None)

    def _mint(self, name: str) -> _Key:
        key = _Key(
            id=f"k_{secrets.token_hex(4)}",
            value="exk_" + secrets.token_hex(16),
            name=name,
            created_at=datetime.now(UTC),
        )
        self.keys[key.id] = key
        self.minted += 1
        return key

    def handle(self, method: str, path: str, token: str, body: Any) -> tuple[int, dict[str, Any]]:
        """One request: its status and JSON answer."""
        parts = urlsplit(path)
        route, query = parts.path, parse_qs(parts.query)
        if route == "/v1/ping":
            return (200, {"ok": True}) if self.use(token) else (401, {"error": "unauthorized"})
        if token != self.admin_token:
            return 401, {"error": "unauthorized"}
        with self.lock:
            if method == "GET" and route == "/v1/keys":
                return 200, {"keys": [k.listing() for k in self.keys.values()]}
            if method == "POST" and route == "/v1/keys":
                return self._create(body)
            match = re.fullmatch(r"/v1/keys/([^/]+)(/activity)?", route)
            key = self.keys.get(match.group(1)) if match else None
            if match is None or key is None:
                return 404, {"error": "not_found"}
            if method == "GET" and match.group(2):
                since = datetime.fromisoformat(query["since"][0]) if "since" in query else None
                count = sum(1 for t in key.uses if since is None or t >= since)
                last = key.last_used_at.isoformat() if key.last_used_at else None
                return 200, {"last_used_at": last, "requests_since": count}
            if method == "DELETE" and not match.group(2):
                if key.status != "revoked":
                    key.status, key.revoked_at = "revoked", datetime.now(UTC)
                return 200, key.listing()
        return 405, {"error": "method_not_allowed"}

    def _create(self, body: Any) -> tuple[int, dict[str, Any]]:
        if self.fail_next_mint_with is not None:
            status, self.fail_next_mint_with = self.fail_next_mint_with, None
            return status, {"error": "injected"}
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            return 422, {"error": "name_required"}
        if sum(k.status == "active" for k in self.keys.values()) >= MAX_ACTIVE:
            return 409, {"error": "key_limit_reached"}
        key = self._mint(name)
        return 201, {"key": key.listing(), "secret": key.value}


def _handler(vendor: ExampleVendor) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            auth = self.headers.get("Authorization", "")
            token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            status, answer = vendor.handle(self.command, self.path, token, body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _serve  # noqa: N815 - http.server's names

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: no request lines on stderr."""

    return Handler
