"""The webhook consumer beyond the contract: the event's shape, the signature a receiver
checks with the README's example, and which answers are retried, against a real HTTP
receiver on loopback that plays a script of answers."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import providers.consumers.webhook_verify as verify_module
from providers.consumers.webhook import WebhookRoll, delivery_id
from rotator.abc import RollEvent
from rotator.builtin.consumers import WebhookConsumer
from rotator.errors import ConfigError, ConsumerError, ConsumerTimeout, ConsumerUnavailable
from rotator.spec import parse_rotation_file

SECRET_ENV = "WEBHOOK_TEST_SECRET"
SECRET = "whsec_test_0123456789"
EVENT = RollEvent("payments", "att-7", "rotation", "key-42", "adj_live_1a2b", "3f5c0e9a41d2")


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Script:
    """Answers to give, in order (the last one repeats): ``(status, headers)``."""

    answers: list[tuple[int, dict[str, str]]] = field(default_factory=lambda: [(204, {})])
    seen: list[Seen] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: Any

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        script: Script = self.server.script
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        script.seen.append(
            Seen(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic())
        )
        status, headers = script.answers[min(len(script.seen), len(script.answers)) - 1]
        self.send_response(status)
        for name, value in {"Content-Length": "0", **headers}.items():
            self.send_header(name, value)
        self.end_headers()

    def do_GET(self) -> None:  # a followed 302 would come back as a GET
        self.do_POST()


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Script]]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.script = Script()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server.script  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


def _roll(url: str, *, attempts: int = 3, timeout: float = 5.0) -> WebhookRoll:
    return WebhookRoll("webhook:test", url, SECRET_ENV, timeout=timeout, attempts=attempts, backoff=0.05)


def _verify_from_readme() -> Any:
    """The receiver's example, run from its text as a receiver pastes it (no rotator import)."""
    namespace: dict[str, Any] = {}
    exec(compile(Path(verify_module.__file__).read_text(), "pasted.py", "exec"), namespace)  # noqa: S102
    return namespace["verify"]


def test_the_event_is_signed_as_documented_and_the_readme_example_verifies_it(
    receiver: tuple[str, Script],
) -> None:
    """One delivery: the documented body and headers; the example accepts it and refuses a
    wrong secret, a changed body and a stale timestamp."""
    url, script = receiver
    _roll(f"{url}/hooks/rotated").roll(EVENT, stop=threading.Event())
    [seen] = script.seen
    body = json.loads(seen.body)
    assert list(body) == ["type", "key", "attempt", "phase", "key_id", "prefix", "fingerprint", "sent_at"]
    assert body | {"sent_at": None} == {"type": "rotator.rolled", **EVENT.to_dict(), "sent_at": None}
    assert body["sent_at"].endswith("Z") and "T" in body["sent_at"]
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["x-rotator-delivery"] == delivery_id("webhook:test", EVENT)
    assert abs(int(seen.headers["x-rotator-timestamp"]) - time.time()) < 5
    assert seen.headers["x-rotator-signature"].startswith("v1=")

    verify = _verify_from_readme()
    assert verify(SECRET, seen.headers, seen.body) is True
    assert verify("another-secret", seen.headers, seen.body) is False
    assert verify(SECRET, seen.headers, seen.body.replace(b"att-7", b"att-8")) is False
    stale = {**seen.headers, "x-rotator-timestamp": str(int(seen.headers["x-rotator-timestamp"]) - 301)}
    assert verify(SECRET, stale, seen.body) is False
    assert verify(SECRET, {**seen.headers, "x-rotator-timestamp": "soon"}, seen.body) is False


def test_transient_answers_are_retried_with_the_same_delivery_and_body(receiver: tuple[str, Script]) -> None:
    """503, then 429 asking to wait 0.4s, then 200: three tries, one delivery id, one body,
    the wait honoured; each try signed afresh."""
    url, script = receiver
    script.answers = [(503, {}), (429, {"Retry-After": "0.4"}), (200, {})]
    _roll(url).roll(EVENT, stop=threading.Event())
    assert len(script.seen) == 3
    assert len({s.headers["x-rotator-delivery"] for s in script.seen}) == 1
    assert len({s.body for s in script.seen}) == 1
    assert script.seen[2].at - script.seen[1].at >= 0.4
    verify = _verify_from_readme()
    assert all(verify(SECRET, s.headers, s.body) for s in script.seen)


@pytest.mark.parametrize("status", [500, 502, 408, 429])
def test_a_receiver_that_stays_down_is_unavailable_after_the_attempts(
    receiver: tuple[str, Script], status: int
) -> None:
    url, script = receiver
    script.answers = [(status, {})]
    with pytest.raises(ConsumerUnavailable, match=rf"^webhook:test: answered HTTP {status}, after 3 tries$"):
        _roll(url).roll(EVENT, stop=threading.Event())
    assert len(script.seen) == 3


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (400, {}, "answered HTTP 400"),
        (401, {}, "answered HTTP 401"),
        (404, {}, "answered HTTP 404"),
        (302, {"Location": "/elsewhere"}, "answered HTTP 302; redirects are not followed"),
        (307, {"Location": "/elsewhere"}, "answered HTTP 307; redirects are not followed"),
    ],
)
def test_a_refusal_or_a_redirect_fails_at_once(
    receiver: tuple[str, Script], status: int, headers: dict[str, str], expected: str
) -> None:
    """A 4xx (but 408/429) or a 3xx needs a person: one try, and the redirect is not followed."""
    url, script = receiver
    script.answers = [(status, headers)]
    with pytest.raises(ConsumerError) as caught:
        _roll(f"{url}/hook").roll(EVENT, stop=threading.Event())
    assert not isinstance(caught.value, ConsumerUnavailable)
    assert str(caught.value) == f"webhook:test: {expected}"
    assert [s.path for s in script.seen] == ["/hook"]


def test_a_long_retry_after_ends_the_pass(receiver: tuple[str, Script]) -> None:
    """A receiver asking for more than a minute is left for the next pass."""
    url, script = receiver
    script.answers = [(503, {"Retry-After": "3600"})]
    with pytest.raises(ConsumerUnavailable, match="answered HTTP 503; it asks to wait 3600s"):
        _roll(url).roll(EVENT, stop=threading.Event())
    assert len(script.seen) == 1


def test_no_listener_is_unavailable_and_the_query_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connection refused is retried, then ConsumerUnavailable; the URL's token is in no message."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = WebhookConsumer.model_validate(
        {
            "type": "webhook",
            "url": f"http://127.0.0.1:{port}/h?token=tok_9f8e7d",
            "secret": {"env": SECRET_ENV},
        }
    )
    consumer = spec.make_consumer(key="payments", base_dir=Path.cwd())
    assert isinstance(consumer, WebhookRoll)
    consumer.backoff = 0.05
    with pytest.raises(ConsumerUnavailable) as caught:
        consumer.roll(EVENT, stop=threading.Event())
    assert str(caught.value) == f"webhook:127.0.0.1:{port}/h: could not deliver (ConnectError), after 5 tries"
    assert "tok_9f8e7d" not in repr(caught.value) and caught.value.__cause__ is None


def test_a_missing_secret_names_its_variable(
    receiver: tuple[str, Script], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, script = receiver
    monkeypatch.delenv(SECRET_ENV)
    with pytest.raises(
        ConsumerError, match=rf"^webhook:test: the signing secret's variable \${SECRET_ENV} is not set$"
    ):
        _roll(url).roll(EVENT, stop=threading.Event())
    assert script.seen == []


def test_plain_http_is_for_loopback_only() -> None:
    """The rotator's one TLS rule: refused in the rotation file, and by the consumer itself."""
    text = f"""version: 1
issuers:
  a: {{type: adjudon, base_url: "https://api.example", credential: {{env: X}}}}
keys:
  k:
    issuer: a
    kind: workspace
    targets: [{{type: file, path: k.env, format: dotenv, field: K}}]
    consumers: [{{type: webhook, url: "http://deploy.internal/hook", secret: {{env: {SECRET_ENV}}}}}]
"""
    with pytest.raises(ConfigError, match="only https, or plain http to a loopback address"):
        parse_rotation_file(text)
    with pytest.raises(ConsumerError, match="only https, or plain http to a loopback address"):
        _roll("http://deploy.internal/hook")


def test_a_silent_receiver_is_a_timeout_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """No answer within ``timeout``: ConsumerTimeout after one try (it may be acting on it)."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    # a listening socket that never accepts: the request is sent, no answer comes
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(ConsumerTimeout, match=r"^webhook:test: no answer within 1s$"):
            _roll(f"http://127.0.0.1:{port}/", timeout=1.0).roll(EVENT, stop=threading.Event())
        assert 0.9 <= time.monotonic() - started < 3


def test_the_delivery_id_is_one_per_roll() -> None:
    """Same consumer, key, attempt and phase: the same id in any process; otherwise another."""
    other_attempt = RollEvent(**{**EVENT.to_dict(), "attempt": "att-8"})  # type: ignore[arg-type]
    assert delivery_id("webhook:a/h", EVENT) == delivery_id("webhook:a/h", EVENT)
    assert str(uuid.UUID(delivery_id("webhook:a/h", EVENT))) == delivery_id("webhook:a/h", EVENT)
    assert delivery_id("webhook:a/h", EVENT) != delivery_id("webhook:a/h", other_attempt)
    assert delivery_id("webhook:a/h", EVENT) != delivery_id("webhook:b/h", EVENT)


def test_readme_quotes_the_verification_example_whole() -> None:
    """The example a receiver pastes is the one the tests verify deliveries with."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    source = Path(verify_module.__file__).read_text(encoding="utf-8")
    assert f"```python\n{source}```" in readme
