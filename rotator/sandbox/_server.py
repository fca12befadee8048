"""The HTTP transport of the emulator: standard library only, quiet, keep-alive."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from rotator.sandbox._common import Response

Handle = Callable[[str, str, Mapping[str, str], bytes], Response]
"""``(method, target, headers, body) -> Response``: what the server serves."""


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "rotator-sandbox"
    sys_version = ""
    timeout = 60  # an idle keep-alive connection ends; its thread with it
    disable_nagle_algorithm = True  # headers and body go out in two writes; don't stall the body
    server: HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request log the base class writes to stderr."""

    def _serve(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        body = self.rfile.read(length) if length > 0 else b""
        try:
            response = self.server.serve_request(self.command, self.path, dict(self.headers.items()), body)
        except Exception:
            # An emulator bug: answer it as the vendor would, and let handle_error show it.
            response = Response(500, {"error": {"code": "INTERNAL_ERROR", "message": "bug"}})
            self._write(response)
            raise
        if response.status == 0:
            self.close_connection = True
            return
        self._write(response)

    def _write(self, response: Response) -> None:
        payload = b"" if response.body is None else json.dumps(response.body).encode()
        self.send_response_only(response.status)
        self.send_header("Server", self.version_string())
        if not any(name.lower() == "date" for name in response.headers):
            self.send_header("Date", self.date_time_string())
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    # The base class dispatches on these names.
    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve  # noqa: N815


class HTTPServer(ThreadingHTTPServer):
    """A threading server that knows its open connections, to cut them on stop."""

    daemon_threads = True
    # Idle keep-alive threads would make server_close() wait for them.
    block_on_close = False

    def __init__(self, address: tuple[str, int], handle: Handle) -> None:
        self.serve_request = handle
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _RequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Cut every open connection, as a vendor going down would."""
        with self._open_lock:
            open_now = list(self._open)
        for sock in open_now:
            with contextlib.suppress(OSError):  # already closed by its peer
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up is no error of ours; anything else is a bug worth a traceback.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)
