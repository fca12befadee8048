"""The webhook consumer for the consumer contract suite (see tests/consumer_harness.py).

The workload is a real HTTP receiver on loopback that checks every delivery with the
receiver's example (``providers/consumers/webhook_verify.py``): a delivery whose signature or
timestamp does not verify is answered 401 and not recorded, so the suite's rolls only count
if the signature scheme works end to end. Paths choose the behaviour: ``/hooks/<id>`` answers
204, ``/gone/<id>`` 404, ``/slow/<id>`` never answers (until the harness is torn down).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from providers.consumers.webhook import WebhookRoll
from providers.consumers.webhook_verify import verify
from rotator.abc import Consumer, RollEvent
from rotator.builtin.consumers import WebhookConsumer


class Receiver(ThreadingHTTPServer):
    """Deliveries by path, verified with ``secret``; ``seen`` holds the verified ones."""

    daemon_threads = True

    def __init__(self, secret: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.secret = secret
        self.seen: dict[str, list[tuple[dict[str, str], dict[str, str]]]] = {}
        self.rejected = 0
        self.release = threading.Event()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        if not verify(self.server.secret, headers, body):
            with self.server.lock:
                self.server.rejected += 1
            self._answer(401)
            return
        if self.path.startswith("/slow/"):
            self.server.release.wait(120)
            return
        if self.path.startswith("/gone/"):
            self._answer(404)
            return
        with self.server.lock:
            self.server.seen.setdefault(self.path, []).append((headers, json.loads(body)))
        self._answer(204)

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


class WebhookHarness:
    name = "webhook"

    def __init__(self, receiver: Receiver, secret_env: str) -> None:
        self.receiver = receiver
        self.secret_env = secret_env
        self._declared: dict[Consumer, WebhookConsumer] = {}

    def _build(self, path: str, *, timeout_s: float = 10.0) -> WebhookRoll:
        spec = WebhookConsumer.model_validate(
            {
                "type": "webhook",
                "url": f"{self.receiver.url}{path}?token=not-in-labels",
                "secret": {"env": self.secret_env},
                "timeout": timeout_s,
                "attempts": 2,
            }
        )
        consumer = spec.make_consumer(key="contract", base_dir=Path.cwd())
        assert isinstance(consumer, WebhookRoll)
        self._declared[consumer] = spec
        return consumer

    def make_consumer(self) -> Consumer:
        return self._build(f"/hooks/{uuid.uuid4().hex[:12]}")

    def declaration(self, consumer: Consumer) -> WebhookConsumer:
        return self._declared[consumer]

    def rolls(self, consumer: Consumer) -> list[RollEvent]:
        path = self._declared[consumer].url.removeprefix(self.receiver.url)
        with self.receiver.lock:
            seen = list(self.receiver.seen.get(path, []))
        events = []
        for _headers, body in seen:
            assert body.pop("type") == "rotator.rolled"
            assert body.pop("sent_at").endswith("Z")
            events.append(RollEvent(**body))
        return events

    def failing_consumer(self) -> Consumer:
        return self._build(f"/gone/{uuid.uuid4().hex[:12]}")

    def stuck_consumer(self, timeout_s: float) -> Consumer:
        return self._build(f"/slow/{uuid.uuid4().hex[:12]}", timeout_s=timeout_s)


@pytest.fixture
def webhook_receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Receiver, str]]:
    """A verifying receiver on a free loopback port, and the variable holding its secret."""
    secret_env = f"HOOK_SECRET_{uuid.uuid4().hex[:8].upper()}"
    secret = f"whsec_{uuid.uuid4().hex}"
    monkeypatch.setenv(secret_env, secret)
    receiver = Receiver(secret)
    thread = threading.Thread(target=receiver.serve_forever, name="webhook receiver", daemon=True)
    thread.start()
    try:
        yield receiver, secret_env
    finally:
        receiver.release.set()
        receiver.shutdown()
        receiver.server_close()
        thread.join(timeout=5)


@pytest.fixture
def consumer_webhook_harness(webhook_receiver: tuple[Receiver, str]) -> WebhookHarness:
    """Deliveries to a real receiver that verifies each signature."""
    receiver, secret_env = webhook_receiver
    return WebhookHarness(receiver, secret_env)
