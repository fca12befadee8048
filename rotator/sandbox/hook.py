"""A webhook receiver that restarts the read-once service (``rotator.sandbox.readonce``) for
each verified ``rotator.rolled`` delivery: the webhook consumer's end of the loop.

It checks each delivery with the receiver's example (``providers/consumers/webhook_verify.py``,
quoted in the README): a bad signature or a stale timestamp is answered 401. A delivery id it
already acted on is answered 204 without a second restart (the rotator sends the same id for
every try of one roll). A restart that fails is answered 500, so the rotator tries again.
Restarts run one at a time.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from providers.consumers.webhook_verify import verify
from rotator.sandbox.readonce import RestartFailed, ServeArgs, restart


class RestartReceiver(ThreadingHTTPServer):
    """Listens on loopback; ``restarts`` counts the restarts it ran, ``rejected`` the 401s."""

    daemon_threads = True

    def __init__(self, secret: str, args: ServeArgs, *, port: int = 0, ready_timeout: float = 30.0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.secret = secret
        self.args = args
        self.ready_timeout = ready_timeout
        self.done: set[str] = set()
        self.restarts = 0
        self.rejected = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"

    def deliver(self, delivery: str) -> tuple[int, str]:
        """Restart once per delivery id: the status to answer and a short reason."""
        with self.lock:
            if delivery in self.done:
                return 204, "already done"
            try:
                gen = restart(self.args, ready_timeout=self.ready_timeout)
            except RestartFailed as exc:
                return 500, str(exc)
            self.done.add(delivery)
            self.restarts += 1
            return 204, f"pid {gen.pid} serving"


class _Handler(BaseHTTPRequestHandler):
    server: RestartReceiver

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"receiver: {format % args}\n")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        if not verify(self.server.secret, headers, body):
            with self.server.lock:
                self.server.rejected += 1
            self._answer(401, "signature or timestamp does not verify")
            return
        try:
            event = json.loads(body)
        except ValueError:
            event = None
        if not isinstance(event, dict) or event.get("type") != "rotator.rolled":
            self._answer(400, "not a rotator.rolled event")
            return
        self._answer(*self.server.deliver(headers.get("x-rotator-delivery", "")))

    def _answer(self, status: int, reason: str) -> None:
        data = reason.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def run_receiver(
    args: ServeArgs, secret_env: str, port: int, port_file: Path | None, ready_timeout: float
) -> int:
    """``readonce receive``: serve until SIGTERM."""
    secret = os.environ.get(secret_env)
    if not secret:
        print(f"readonce receive: the signing secret's variable ${secret_env} is not set", file=sys.stderr)
        return 2
    server = RestartReceiver(secret, args, port=port, ready_timeout=ready_timeout)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, name="receiver", daemon=True)
    thread.start()
    if port_file:
        tmp = port_file.with_name(f".{port_file.name}.tmp")
        tmp.write_text(f"{server.server_address[1]}\n")
        tmp.replace(port_file)
    print(f"readonce receive: listening on {server.url}", flush=True)
    stop.wait()
    server.shutdown()
    server.server_close()
    return 0
