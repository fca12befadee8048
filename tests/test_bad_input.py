"""The bad-input corpus: broken rotation files, garbage vendor answers and store trouble,
each driven through the command line (or the engine, where a race must be staged).

Every case checks the same four things: one clear message naming the problem, the
documented exit code (validate 2; apply 1 failed, 3 held), no traceback, and no change to
the vendor or the stores beyond what is safe: nothing revoked that a target holds, every
target holding a key the vendor accepts, no orphan left active after the next clean pass.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from rotator.abc import SecretStore, Stamp, TargetState
from rotator.engine.runner import Engine
from rotator.sandbox.emulator import Emulator, Response
from rotator.secret import Secret
from rotator.spec import Settings, load_rotation_file
from tests.chaos.invariants import RAW_KEY
from tests.conftest import Outcome
from tests.e2e_helpers import adjudon_issuer, rotation_yaml, write_rotation_file

ADMIN_ENV = "BAD_INPUT_ADMIN_KEY"
TARGET = "{type: file, path: secrets/a.env, format: dotenv, field: ADJUDON_API_KEY}"
BASE = f"""\
version: 1
state_dir: state
defaults:
  max_age: 30d
  verify: {{drain: 1s, propagation: 1s, timeout: 60s}}
issuers:
  emu:
    type: adjudon
    base_url: http://127.0.0.1:9
    credential: {{env: {ADMIN_ENV}}}
keys:
  payments:
    issuer: emu
    kind: agent
    agent_id: payments
    targets:
      - {TARGET}
"""


def assert_one_clear_error(result: Outcome, *fragments: str, code: int) -> None:
    """Exit ``code``; stderr is one ``rotator: error:`` line (plus one indented line per problem
    the file has: exactly one here), naming every fragment; no traceback."""
    assert result.code == code, (result.code, result.err)
    assert "Traceback" not in result.err and "unexpected" not in result.err, result.err
    lines = result.err_lines
    assert lines and lines[0].startswith("rotator: error: "), result.err
    counted = re.search(r": (\d+) problems?:$", lines[0])
    assert len(lines) == (1 + int(counted.group(1)) if counted else 1), result.err
    assert counted is None or counted.group(1) == "1", result.err
    for fragment in fragments:
        assert fragment in result.err, (fragment, result.err)


# --------------------------------------------------------------------------- rotation files

Edit = tuple[str, str]
ALIAS_BOMB = "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefghi", "bcdefghij", strict=True)
).join(["a: &a [x, x, x, x, x, x, x, x, x]\n", ""])
FILE_CASES: list[tuple[str, list[Edit] | str, tuple[str, ...]]] = [
    # YAML itself
    ("yaml-unclosed-flow", [(f"{{env: {ADMIN_ENV}}}", f"{{env: {ADMIN_ENV}")], ("not valid YAML",)),
    ("yaml-tab-indent", [("    issuer: emu", "\tissuer: emu")], ("not valid YAML",)),
    ("yaml-bad-indent", [("    kind: agent", "      kind: agent")], ("not valid YAML",)),
    ("yaml-a-list", "- version: 1\n- keys: {}\n", ("must be a mapping",)),
    ("yaml-empty", "", ("must be a mapping",)),
    ("yaml-only-comments", "# nothing here\n", ("must be a mapping",)),
    (
        "duplicate-key-name",
        [
            (
                "      - " + TARGET,
                "      - " + TARGET + "\n  payments:\n    issuer: emu\n"
                "    targets: [{type: file, path: b.key}]",
            )
        ],
        ("duplicate key 'payments'",),
    ),
    ("duplicate-field", [(TARGET, "{type: file, path: a.key, path: b.key}")], ("duplicate key 'path'",)),
    (
        "duplicate-top-level",
        [("state_dir: state", "state_dir: state\nstate_dir: other")],
        ("duplicate key 'state_dir'",),
    ),
    # unknown fields
    (
        "unknown-top-field",
        [("state_dir: state", "state_dir: state\ncolour: blue")],
        ("colour: unknown field",),
    ),
    (
        "unknown-key-field",
        [("    kind: agent", "    kind: agent\n    owner: team-a")],
        ("keys.payments.owner: unknown field",),
    ),
    (
        "unknown-target-field",
        [("field: ADJUDON_API_KEY}", "field: ADJUDON_API_KEY, mode: 384}")],
        ("keys.payments.targets.0.mode: unknown field",),
    ),
    (
        "unknown-verify-field",
        [("timeout: 60s}", "timeout: 60s, grace: 1m}")],
        ("defaults.verify.grace: unknown field",),
    ),
    (
        "unknown-issuer-field",
        [("    type: adjudon", "    type: adjudon\n    region: eu")],
        ("issuers.emu.region: unknown field",),
    ),
    # wrong types and values
    ("version-2", [("version: 1", "version: 2")], ("version",)),
    ("version-a-word", [("version: 1", "version: one")], ("version",)),
    ("max-age-a-word", [("max_age: 30d", "max_age: soon")], ("defaults.max_age", "not a duration")),
    ("max-age-a-list", [("max_age: 30d", "max_age: [1, 2]")], ("defaults.max_age",)),
    ("drain-negative", [("drain: 1s", "drain: -5m")], ("defaults.verify.drain",)),
    ("drain-a-bool", [("drain: 1s", "drain: true")], ("defaults.verify.drain",)),
    (
        "on-timeout-unknown",
        [("timeout: 60s}", "timeout: 60s, on_timeout: explode}")],
        ("defaults.verify.on_timeout",),
    ),
    (
        "require-new-traffic-maybe",
        [("timeout: 60s}", "timeout: 60s, require_new_traffic: maybe}")],
        ("defaults.verify.require_new_traffic",),
    ),
    ("kind-unknown", [("kind: agent", "kind: robot")], ("keys.payments.kind",)),
    (
        "strategy-unknown",
        [("    kind: agent", "    kind: agent\n    strategy: sideways")],
        ("keys.payments.strategy",),
    ),
    ("agent-id-a-list", [("agent_id: payments", "agent_id: [a, b]")], ("keys.payments.agent_id",)),
    ("keys-a-list", [("keys:\n  payments:", "keys:\n  - payments:")], ("keys",)),
    ("targets-empty", [("    targets:\n      - " + TARGET, "    targets: []")], ("keys.payments.targets",)),
    ("target-a-string", [("      - " + TARGET, "      - secrets/a.env")], ("keys.payments.targets.0",)),
    ("target-type-unknown", [(TARGET, "{type: s3, bucket: b}")], ("keys.payments.targets.0", "s3")),
    # a target without its required field
    (
        "aws-without-secret-id",
        [(TARGET, "{type: aws, region: us-east-1}")],
        ("keys.payments.targets.0.secret_id: required field is missing",),
    ),
    (
        "vault-without-path",
        [(TARGET, "{type: vault, url: https://vault:8200}")],
        ("keys.payments.targets.0.path: required field is missing",),
    ),
    (
        "file-without-path",
        [(TARGET, "{type: file, format: raw}")],
        ("keys.payments.targets.0.path: required field is missing",),
    ),
    (
        "gcp-without-secret",
        [(TARGET, "{type: gcp, project: p}")],
        ("keys.payments.targets.0.secret: required field is missing",),
    ),
    ("dotenv-without-field", [(TARGET, "{type: file, path: a.env, format: dotenv}")], ("needs a field",)),
    (
        "raw-with-field",
        [(TARGET, "{type: file, path: a.key, field: K}")],
        ("field needs format dotenv or json",),
    ),
    # references and rules across the file
    ("unknown-issuer", [("    issuer: emu", "    issuer: nobody")], ("unknown issuer 'nobody'",)),
    ("issuer-type-unknown", [("    type: adjudon", "    type: stripe")], ("issuers.emu", "stripe")),
    ("agent-without-agent-id", [("    agent_id: payments\n", "")], ("kind agent needs an agent_id",)),
    ("agent-id-on-workspace", [("kind: agent", "kind: workspace")], ("agent_id is only for kind agent",)),
    ("credential-key-undeclared", [(f"{{env: {ADMIN_ENV}}}", "{key: ghost}")], ("no key named 'ghost'",)),
    (
        "overlap-on-reset-vendor",
        [
            (
                f"    type: adjudon\n    base_url: http://127.0.0.1:9\n    credential: {{env: {ADMIN_ENV}}}",
                "    type: adjutor\n    app_id: app_1",
            ),
            ("    kind: agent\n    agent_id: payments\n", "    strategy: overlap\n"),
        ],
        ("overlap is impossible on a reset-only vendor",),
    ),
    ("lease-type-unknown", [("state_dir: state", "state_dir: state\nlease: {type: redis}")], ("lease",)),
    # schedules
    (
        "cron-never-fires-feb-31",
        [("    kind: agent", '    kind: agent\n    schedule: "0 0 31 2 *"')],
        ("keys.payments.schedule", "never fires"),
    ),
    (
        "cron-never-fires-apr-31",
        [("    kind: agent", '    kind: agent\n    schedule: "0 3 31 4 *"')],
        ("keys.payments.schedule", "never fires"),
    ),
    (
        "cron-words",
        [("    kind: agent", '    kind: agent\n    schedule: "every day"')],
        ("keys.payments.schedule", "not a 5-field cron expression"),
    ),
    (
        "cron-six-fields",
        [("    kind: agent", '    kind: agent\n    schedule: "0 0 3 * * MON"')],
        ("keys.payments.schedule", "wrong number of fields"),
    ),
    (
        "cron-minute-61",
        [("    kind: agent", '    kind: agent\n    schedule: "61 * * * *"')],
        ("keys.payments.schedule",),
    ),
    # hostile files: refused before they cost time or memory
    ("alias-bomb", ALIAS_BOMB, ("aliases expand the document", "at most 10000")),
    (
        "alias-recursive",
        BASE + "x: &x [*x]\n",
        ("rotations.yaml:18:", "an alias refers to a collection that contains it"),
    ),
    (
        "nested-too-deep",
        BASE.replace("max_age: 30d", "max_age: " + "[" * 200 + "]" * 200),
        ("nested deeper than 64 levels",),
    ),
    (
        "over-the-size-cap",
        BASE + "# " + "x" * (1 << 20) + "\n",
        ("over the 1 MiB cap", "ROTATOR_MAX_FILE_MIB"),
    ),
    (
        "yaml-python-tag",
        [("agent_id: payments", "agent_id: !!python/object/apply:os.getpid []")],
        ("rotations.yaml:15:", "not allowed"),
    ),
    # durations beyond any sense
    (
        "drain-infinite",
        [("drain: 1s", "drain: .inf")],
        ("rotations.yaml:5:", "defaults.verify.drain", "10 years"),
    ),
    (
        "max-age-overflows",
        [("max_age: 30d", "max_age: 999999999999d")],
        ("rotations.yaml:4:", "defaults.max_age", "10 years"),
    ),
    ("max-age-eleven-years", [("max_age: 30d", "max_age: 4015d")], ("defaults.max_age", "3650d")),
    # names that would forge lines in plan and status
    (
        "key-name-newline",
        [("  payments:", '  "payments\\nOK: all keys rotated":')],
        ("rotations.yaml:12:", "keys.'payments\\nOK: all keys rotated'", "a name is"),
    ),
    (
        "key-name-bidi",
        [("  payments:", "  pay\u202estnem:")],
        ("rotations.yaml:12:", "keys.'pay\\u202estnem'", "a name is"),
    ),
    ("issuer-name-space", [("  emu:", "  emu prod:")], ("issuers.'emu prod'", "a name is")),
    (
        "issuer-ref-bidi",
        [("issuer: emu", "issuer: e\u202emu")],
        ("rotations.yaml:13:", "keys.payments.issuer", "a name is"),
    ),
    (
        "target-path-newline",
        [("path: secrets/a.env", 'path: "secrets/a.env\\nok"')],
        ("keys.payments.targets.0.path", "control characters"),
    ),
    # plain http to a host that is not loopback, whatever its name looks like
    (
        "http-to-nip-io",
        [("http://127.0.0.1:9", "http://127.0.0.1.nip.io:9")],
        ("rotations.yaml:9:", "issuers.emu.base_url", "only https"),
    ),
    (
        "http-to-localhost-lookalike",
        [("http://127.0.0.1:9", "http://localhost.example.com:9")],
        ("issuers.emu.base_url", "only https"),
    ),
    (
        "vault-over-http",
        [(TARGET, "{type: vault, url: 'http://vault:8200', path: a}")],
        ("keys.payments.targets.0.url", "only https"),
    ),
    (
        "aws-endpoint-over-http",
        [(TARGET, "{type: aws, secret_id: a, endpoint_url: 'http://10.0.0.5:4566'}")],
        ("keys.payments.targets.0.endpoint_url", "only https"),
    ),
    (
        "lease-endpoint-over-http",
        [
            (
                "state_dir: state",
                "state_dir: state\nlease: {type: dynamodb, table: locks, endpoint_url: 'http://dynamo:8000'}",
            )
        ],
        ("lease.endpoint_url", "only https"),
    ),
    # a verify policy that can only end in a hold
    (
        "timeout-shorter-than-drain",
        [("timeout: 60s", "timeout: 30s"), ("drain: 1s", "drain: 1m")],
        ("rotations.yaml:5:", "defaults.verify.timeout", "timeout 30s", "propagation 1s", "drain 1m"),
    ),
    (
        "key-timeout-shorter-than-drain",
        [("    kind: agent", "    kind: agent\n    verify: {drain: 15m, timeout: 10m}")],
        ("rotations.yaml:15:", "keys.payments.verify.timeout", "timeout 10m", "propagation 2m", "drain 15m"),
    ),
]


def _file_text(edits: list[Edit] | str) -> str:
    if isinstance(edits, str):
        return edits
    text = BASE
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


@pytest.mark.parametrize(("name", "edits", "fragments"), FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_broken_rotation_file(
    tmp_path: Path, cli: Any, name: str, edits: list[Edit] | str, fragments: tuple[str, ...]
) -> None:
    """A broken rotation file: validate exits 2 with one message naming the problem, apply touches nothing."""
    path = tmp_path / "rotations.yaml"
    path.write_text(_file_text(edits))
    result = cli("-f", str(path), "validate")
    assert_one_clear_error(result, "rotations.yaml", *fragments, code=2)
    assert result.out == ""
    applied = cli("-f", str(path), "apply")
    assert applied.code == 2 and applied.err == result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rotations.yaml"]


def test_missing_rotation_file(tmp_path: Path, cli: Any) -> None:
    """No rotation file: exit 2, naming the path and how to give one."""
    assert_one_clear_error(
        cli("-f", str(tmp_path / "nope.yaml"), "validate"), "nope.yaml", "no such rotation file", code=2
    )


def test_rotation_file_not_utf8(tmp_path: Path, cli: Any) -> None:
    """A rotation file that is not UTF-8 text is invalid (exit 2), not an unexpected error."""
    path = tmp_path / "rotations.yaml"
    path.write_bytes(BASE.encode().replace(b"payments:", b"pay\xffments:", 1))
    assert_one_clear_error(cli("-f", str(path), "validate"), "rotations.yaml", "UTF-8", code=2)


# --------------------------------------------------------------------------- garbage vendor

Answer = Callable[[Response], "tuple[int, dict[str, str], bytes] | None"]


@dataclass(frozen=True)
class Rule:
    """While set, answer ``method path`` with ``answer``; ``forward`` lets the emulator serve
    the request first (so a mint really happens and only its answer is garbage), otherwise
    the answer is made from a GET of the same path. An answer of ``None`` cuts the
    connection without a word."""

    method: str
    path: str
    forward: bool
    answer: Answer


class GarbageVendor:
    """The vendor emulator over HTTP, with one kind of answer turned into garbage on demand."""

    def __init__(self) -> None:
        self.emulator = Emulator()
        self.rule: Rule | None = None
        self.hits = 0
        vendor = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

            def _serve(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?", 1)[0]
                rule = vendor.rule
                if rule is None or rule.method != self.command or not re.fullmatch(rule.path, path):
                    self._send(_encode(vendor._handle(self, body)))
                    return
                vendor.hits += 1
                # not forwarded: what the vendor would say about the resource, without acting
                served = vendor._handle(self, body) if rule.forward else vendor._peek(self)
                answer = rule.answer(served)
                if answer is None:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self._send(answer)

            def _send(self, answer: tuple[int, dict[str, str], bytes]) -> None:
                status, headers, payload = answer
                self.send_response(status)
                headers = {"Content-Type": "application/json", "Content-Length": str(len(payload)), **headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
                if int(headers["Content-Length"]) != len(payload):
                    self.close_connection = True

            do_GET = do_POST = do_DELETE = _serve  # noqa: N815

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def _handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> Response:
        return self.emulator.handle(handler.command, handler.path, dict(handler.headers.items()), body)

    def _peek(self, handler: BaseHTTPRequestHandler) -> Response:
        return self.emulator.handle("GET", handler.path, dict(handler.headers.items()))

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def agent_keys(self, *, active: bool | None = None) -> list[dict[str, Any]]:
        keys = [k for k in self.emulator.adjudon_keys() if k["type"] == "agent"]
        return [k for k in keys if active is None or (k["status"] == "active") == active]


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up on a 2 MB answer is the point of that case, not an error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _encode(response: Response) -> tuple[int, dict[str, str], bytes]:
    return response.status, dict(response.headers), json.dumps(response.body).encode()


def edited(change: Callable[[dict[str, Any]], None]) -> Answer:
    """The vendor's own answer, with its ``data`` changed by ``change``."""

    def answer(served: Response) -> tuple[int, dict[str, str], bytes]:
        assert isinstance(served.body, dict)
        change(served.body["data"])
        return _encode(served)

    return answer


def raw(status: int, payload: bytes, **headers: str) -> Answer:
    """A fixed answer, whatever the vendor did."""
    return lambda served: (status, headers, payload)


def truncated(served: Response) -> tuple[int, dict[str, str], bytes]:
    """The vendor's answer cut in half, its length saying so."""
    status, headers, payload = _encode(served)
    return status, headers, payload[: len(payload) // 2]


def cut_mid_body(served: Response) -> tuple[int, dict[str, str], bytes]:
    """The vendor's answer promising more bytes than it sends: the connection ends mid-body."""
    status, headers, payload = _encode(served)
    return status, {**headers, "Content-Length": str(len(payload))}, payload[:20]


def huge(served: Response) -> tuple[int, dict[str, str], bytes]:
    """The vendor's answer padded to 2 MB of valid JSON."""
    assert isinstance(served.body, dict)
    return served.status, {}, json.dumps({**served.body, "padding": "x" * (2 << 20)}).encode()


def _set(name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        if value is _DELETE:
            data.pop(name, None)
        else:
            data[name] = value(data) if callable(value) else value

    return change


def _each(change: Callable[[dict[str, Any]], None]) -> Callable[[Any], None]:
    def apply_all(data: Any) -> None:
        for item in data:
            change(item)

    return apply_all


_DELETE = object()
HTML = b"<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"
MINT, LIST, REVOKE, HEALTH = (
    ("POST", r"/api/v1/api-keys"),
    ("GET", r"/api/v1/api-keys"),
    ("DELETE", r"/api/v1/api-keys/[^/]+"),
    ("GET", r"/health"),
)


def _error(status: int, code: str, **headers: str) -> Answer:
    body = {"error": {"code": code, "message": "injected"}, "request_id": "req_bad_input"}
    return raw(status, json.dumps(body).encode(), **headers)


@dataclass(frozen=True)
class VendorCase:
    name: str
    command: str
    """``rotate`` (the case is in the mint and after) or ``apply`` (in the observation)."""
    where: tuple[str, str]
    forward: bool
    answer: Answer
    code: int
    fragment: str


VENDOR_CASES = [
    # a minted key that comes back wrong: left unused at the vendor, revoked as an orphan next pass
    VendorCase(
        "mint-key-in-workspace-format",
        "rotate",
        MINT,
        True,
        edited(_set("key", "adj_live_" + "ab" * 32)),
        1,
        "not an agent key",
    ),
    VendorCase(
        "mint-key-truncated",
        "rotate",
        MINT,
        True,
        edited(_set("key", lambda d: d["key"][:-6])),
        1,
        "not an agent key",
    ),
    VendorCase(
        "mint-key-with-another-prefix",
        "rotate",
        MINT,
        True,
        edited(_set("prefix", "adj_agent_zzz")),
        1,
        "does not start with its prefix",
    ),
    VendorCase(
        "mint-201-without-key",
        "rotate",
        MINT,
        True,
        edited(_set("key", _DELETE)),
        1,
        "came without its value",
    ),
    VendorCase(
        "mint-key-of-another-agent",
        "rotate",
        MINT,
        True,
        edited(_set("agent_id", "someone-else")),
        1,
        "not of this scope",
    ),
    VendorCase(
        "mint-created-at-not-a-time",
        "rotate",
        MINT,
        True,
        edited(_set("created_at", "yesterday")),
        1,
        "RFC 3339",
    ),
    VendorCase(
        "mint-html-page-201",
        "rotate",
        MINT,
        True,
        raw(201, HTML, **{"Content-Type": "text/html"}),
        1,
        "answer is not a JSON object",
    ),
    VendorCase("mint-truncated-json", "rotate", MINT, True, truncated, 1, "answer is not a JSON object"),
    VendorCase("mint-2mb-body", "rotate", MINT, True, huge, 1, "answer larger than"),
    VendorCase(
        "mint-json-array", "rotate", MINT, True, raw(201, b"[1, 2, 3]"), 1, "answer is not a JSON object"
    ),
    VendorCase(
        "mint-data-null", "rotate", MINT, True, raw(201, b'{"data": null}'), 1, "expected a JSON object"
    ),
    VendorCase(
        "mint-connection-cut-after-processing",
        "rotate",
        MINT,
        True,
        lambda served: None,
        1,
        "may have reached the vendor",
    ),
    VendorCase(
        "mint-connection-cut-mid-body", "rotate", MINT, True, cut_mid_body, 1, "may have reached the vendor"
    ),
    # refused before anything happened
    VendorCase(
        "mint-html-502-every-time",
        "rotate",
        MINT,
        False,
        raw(502, HTML, **{"Content-Type": "text/html"}),
        1,
        "HTTP 502",
    ),
    VendorCase(
        "mint-409-key-limit",
        "rotate",
        MINT,
        False,
        _error(409, "KEY_LIMIT_REACHED"),
        3,
        "two keys are already active",
    ),
    VendorCase(
        "mint-422-validation", "rotate", MINT, False, _error(422, "VALIDATION_ERROR"), 1, "VALIDATION_ERROR"
    ),
    # the key listing the whole pass stands on
    VendorCase("list-html-page-200", "apply", LIST, False, raw(200, HTML), 1, "answer is not a JSON object"),
    VendorCase("list-empty-200", "apply", LIST, False, raw(200, b""), 1, "answer is not a JSON object"),
    VendorCase("list-truncated-json", "apply", LIST, True, truncated, 1, "answer is not a JSON object"),
    VendorCase("list-2mb-body", "apply", LIST, True, huge, 1, "answer larger than"),
    VendorCase(
        "list-data-an-object",
        "apply",
        LIST,
        False,
        raw(200, b'{"data": {"id": "key_1"}}'),
        1,
        "field 'data' is missing or not a list",
    ),
    VendorCase(
        "list-status-paused",
        "apply",
        LIST,
        True,
        edited(_each(_set("status", "paused"))),
        1,
        "field 'status' is not active or revoked",
    ),
    VendorCase(
        "list-created-at-a-number",
        "apply",
        LIST,
        True,
        edited(_each(_set("created_at", 1700000000))),
        1,
        "field 'created_at'",
    ),
    VendorCase(
        "list-401-token-revoked", "apply", LIST, False, _error(401, "TOKEN_REVOKED"), 1, "TOKEN_REVOKED"
    ),
    VendorCase(
        "list-429-forever",
        "apply",
        LIST,
        False,
        _error(429, "RATE_LIMIT_EXCEEDED", **{"Retry-After": "0.05"}),
        1,
        "gave up after",
    ),
    # after the mint: the revoke and the probe
    VendorCase(
        "revoke-answer-still-active",
        "rotate",
        REVOKE,
        False,
        edited(_set("status", "active")),
        1,
        "is not shown as revoked",
    ),
    VendorCase(
        "probe-rejects-the-new-key",
        "rotate",
        HEALTH,
        False,
        _error(401, "INVALID_API_KEY"),
        3,
        "the vendor rejects the new key",
    ),
]


FAST_ENV = {
    "ROTATOR_RETRY_INITIAL": "0.01",
    "ROTATOR_RETRY_ATTEMPTS": "3",
    "ROTATOR_RETRY_MAX_TOTAL": "2",
    "ROTATOR_PROBE_TIMEOUT": "1",
}
FILE_TARGETS = [
    "{type: file, path: secrets/a.env, format: dotenv, field: ADJUDON_API_KEY}",
    "{type: file, path: secrets/b.json, format: json, field: api_key}",
]


@pytest.fixture
def vendor(monkeypatch: pytest.MonkeyPatch) -> Iterator[GarbageVendor]:
    """The garbage-capable vendor, its admin key in the environment, short retries."""
    server = GarbageVendor()
    monkeypatch.setenv(ADMIN_ENV, server.emulator.bootstrap_workspace_key())
    for name, value in FAST_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ROTATOR_LOG_LEVEL", raising=False)
    yield server
    server.stop()


def write_spec(tmp: Path, url: str, targets: list[str] = FILE_TARGETS) -> str:
    text = rotation_yaml(
        defaults={"verify": "{drain: 0s, propagation: 0s, timeout: 60s}"},
        issuers={"emu": adjudon_issuer(url, ADMIN_ENV)},
        keys={"payments": {"issuer": "emu", "kind": "agent", "agent_id": "payments", "targets": targets}},
    )
    return str(write_rotation_file(tmp, text))


def stored(tmp: Path) -> dict[str, bytes]:
    """Every file under secrets/ (what consumers read, and the rotator's sidecars)."""
    return {p.name: p.read_bytes() for p in sorted((tmp / "secrets").iterdir())}


def current_keys(tmp: Path, spec: str) -> list[str | None]:
    """The value each target holds as current, read through the rotator's own stores."""
    from providers import open_store
    from rotator.spec import load_rotation_file

    rotation = load_rotation_file(Path(spec))
    out = []
    for target in rotation.keys["payments"].targets:
        current = open_store(target, base_dir=tmp).read().current
        out.append(None if current is None else current.value.reveal())
    return out


def assert_failed_cleanly(result: Outcome, fragment: str, *, code: int) -> None:
    """apply/rotate exit ``code``; stderr is the one warning line naming the key and the problem;
    the JSON result says the same; no traceback and no raw key anywhere."""
    assert result.code == code, (result.code, result.out, result.err)
    assert "Traceback" not in result.err
    lines = result.err_lines
    assert len(lines) == 1, result.err
    assert " WARNING rotator.engine: payments: " in lines[0] and fragment in lines[0], lines[0]
    [row] = json.loads(result.out)
    assert row["outcome"] == ("held" if code == 3 else "failed") and fragment in row["message"]
    assert RAW_KEY.search((result.out + result.err).encode()) is None


def assert_safe_after_next_pass(cli: Any, vendor: GarbageVendor, tmp: Path, spec: str) -> None:
    """A clean pass ends at rest: every target holds the one active key, no orphan is left."""
    again = cli("-f", spec, "apply", "--wait", "--output", "json")
    assert again.code == 0, again
    held = current_keys(tmp, spec)
    assert len(set(held)) == 1 and held[0] is not None and vendor.emulator.key_accepted(held[0])
    assert [k["prefix"] for k in vendor.agent_keys(active=True)] == [held[0][:13]]


@pytest.mark.parametrize("case", VENDOR_CASES, ids=[c.name for c in VENDOR_CASES])
def test_garbage_from_the_vendor(tmp_path: Path, cli: Any, vendor: GarbageVendor, case: VendorCase) -> None:
    """A garbage vendor answer: one clear message, the documented exit code, nothing unsafe done."""
    spec = write_spec(tmp_path, vendor.url)
    assert cli("-f", spec, "apply", "--output", "json").code == 0
    before, old = stored(tmp_path), current_keys(tmp_path, spec)[0]
    assert old is not None
    vendor.rule = Rule(*case.where, case.forward, case.answer)
    args = ["rotate", "payments"] if case.command == "rotate" else ["apply"]
    if case.where == REVOKE:
        # the drain is judged in the vendor's clock, known to the second from its `Date`
        # header and taken at its earliest, so even a 0 s drain may end a second later
        args.append("--wait")
    result = cli("-f", spec, *args, "--output", "json")
    vendor.rule = None
    assert vendor.hits >= 1
    assert_failed_cleanly(result, case.fragment, code=case.code)
    assert vendor.emulator.key_accepted(old), "the key in service was revoked"
    if case.where in (MINT, LIST):
        assert stored(tmp_path) == before, "a store was written"
    for value in current_keys(tmp_path, spec):
        assert value is not None and vendor.emulator.key_accepted(value)
    assert_safe_after_next_pass(cli, vendor, tmp_path, spec)
    if case.where == MINT and case.forward:
        assert len(vendor.agent_keys()) == 2  # the first key and the garbled mint, now revoked
        assert any(e["event"] == "orphan-revoked" for e in _journal(tmp_path))


def test_admin_credential_is_an_agent_key(
    tmp_path: Path, cli: Any, vendor: GarbageVendor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Managing keys with an agent key: the vendor's 403 is named, nothing is minted."""
    spec = write_spec(tmp_path, vendor.url)
    monkeypatch.setenv(ADMIN_ENV, vendor.emulator.create_agent_key("elsewhere"))
    assert_failed_cleanly(cli("-f", spec, "apply", "--output", "json"), "FORBIDDEN", code=1)
    assert [k["agent_id"] for k in vendor.agent_keys()] == ["elsewhere"]
    assert not (tmp_path / "secrets/a.env").exists()


def _journal(tmp: Path) -> list[dict[str, Any]]:
    path = tmp / "state/audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# --------------------------------------------------------------------------- store trouble


@dataclass(frozen=True)
class Corruption:
    name: str
    file: str
    content: bytes
    fragment: str


CORRUPTIONS = [
    Corruption("json-target-not-json", "b.json", b"{api_key: oops\n", "not valid JSON (line 1 column 2)"),
    Corruption("json-target-a-list", "b.json", b'["adj_agent_"]\n', "not an object"),
    Corruption("json-field-a-number", "b.json", b'{"api_key": 42}\n', "field api_key is not a string"),
    Corruption("dotenv-target-not-dotenv", "a.env", b"this is not a dotenv line\n", "not a dotenv file"),
    Corruption("dotenv-unterminated-quote", "a.env", b"ADJUDON_API_KEY='adj_agent_\n", "unterminated quote"),
    Corruption("sidecar-damaged", "a.env.rotator.json", b"{not json", "is damaged; delete it"),
    Corruption("target-not-utf8", "a.env", b"ADJUDON_API_KEY=\xff\xfe\n", "is not UTF-8 text"),
]


@pytest.mark.parametrize("case", CORRUPTIONS, ids=[c.name for c in CORRUPTIONS])
def test_store_holds_garbage(tmp_path: Path, cli: Any, vendor: GarbageVendor, case: Corruption) -> None:
    """A target whose content is not what it declares: named, nothing minted, nothing written."""
    spec = write_spec(tmp_path, vendor.url)
    assert cli("-f", spec, "apply", "--output", "json").code == 0
    path = tmp_path / "secrets" / case.file
    good = path.read_bytes()
    path.write_bytes(case.content)
    before, minted = stored(tmp_path), len(vendor.agent_keys())
    assert_failed_cleanly(cli("-f", spec, "rotate", "payments", "--output", "json"), case.fragment, code=1)
    assert stored(tmp_path) == before and len(vendor.agent_keys()) == minted
    path.write_bytes(good)
    assert_safe_after_next_pass(cli, vendor, tmp_path, spec)


def test_store_unreachable(
    tmp_path: Path, cli: Any, vendor: GarbageVendor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Vault nobody listens on: named as unreachable, and no key is minted blind."""
    monkeypatch.setenv("VAULT_TOKEN", "s.nothing")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    vault = f'{{type: vault, url: "http://127.0.0.1:{port}", path: bad-input/down, field: api_key}}'
    spec = write_spec(tmp_path, vendor.url, [FILE_TARGETS[0], vault])
    assert_failed_cleanly(cli("-f", spec, "apply", "--output", "json"), "is unreachable", code=1)
    assert vendor.agent_keys() == [] and not (tmp_path / "secrets/a.env").exists()


@pytest.fixture
def vault_world(
    tmp_path: Path, vendor: GarbageVendor, openbao_server: Any, monkeypatch: pytest.MonkeyPatch, cli: Any
) -> dict[str, Any]:
    """A key in a file and in Vault (the session's OpenBao), rotated once."""
    monkeypatch.setenv("VAULT_TOKEN", openbao_server.root_token)
    path = f"bad-input/{tmp_path.name}"
    vault = f'{{type: vault, url: "{openbao_server.url}", path: "{path}", field: api_key}}'
    spec = write_spec(tmp_path, vendor.url, [FILE_TARGETS[0], vault])
    assert cli("-f", spec, "apply", "--output", "json").code == 0
    return {"spec": spec, "path": path, "hvac": openbao_server.client(), "server": openbao_server}


def _vault_data(world: dict[str, Any]) -> Any:
    answer = world["hvac"].secrets.kv.v2.read_secret_version(
        path=world["path"], raise_on_deleted_version=True
    )
    return answer["data"]["data"]


def test_vault_access_denied(
    tmp_path: Path,
    cli: Any,
    vendor: GarbageVendor,
    vault_world: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A token whose policy is for another path: the denial is named, nothing minted or written."""
    server = vault_world["server"]
    server.client().sys.create_or_update_policy(
        name="bad-input-elsewhere", policy='path "secret/data/elsewhere/*" { capabilities = ["read"] }\n'
    )
    monkeypatch.setenv("VAULT_TOKEN", server.token("bad-input-elsewhere"))
    before, data, minted = stored(tmp_path), _vault_data(vault_world), len(vendor.agent_keys())
    assert_failed_cleanly(
        cli("-f", vault_world["spec"], "rotate", "payments", "--output", "json"), "permission denied", code=1
    )
    assert (
        stored(tmp_path) == before and _vault_data(vault_world) == data and len(vendor.agent_keys()) == minted
    )
    monkeypatch.setenv("VAULT_TOKEN", server.root_token)
    assert_safe_after_next_pass(cli, vendor, tmp_path, vault_world["spec"])


def test_vault_token_missing(
    tmp_path: Path,
    cli: Any,
    vendor: GarbageVendor,
    vault_world: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No VAULT_TOKEN: the message says which variable to set; nothing is minted."""
    monkeypatch.delenv("VAULT_TOKEN")
    minted = len(vendor.agent_keys())
    assert_failed_cleanly(
        cli("-f", vault_world["spec"], "rotate", "payments", "--output", "json"),
        "no Vault token: set VAULT_TOKEN",
        code=1,
    )
    assert len(vendor.agent_keys()) == minted


def test_vault_field_is_not_a_string(
    tmp_path: Path, cli: Any, vendor: GarbageVendor, vault_world: dict[str, Any]
) -> None:
    """Someone wrote a map where the key's field is: named, the secret left as it is."""
    hvac = vault_world["hvac"]
    hvac.secrets.kv.v2.create_or_update_secret(
        path=vault_world["path"], secret={"api_key": {"not": "a string"}}
    )
    data, minted = _vault_data(vault_world), len(vendor.agent_keys())
    assert_failed_cleanly(
        cli("-f", vault_world["spec"], "rotate", "payments", "--output", "json"),
        "holds a dict, not a string",
        code=1,
    )
    assert _vault_data(vault_world) == data and len(vendor.agent_keys()) == minted


@pytest.fixture
def aws_world(
    tmp_path: Path, vendor: GarbageVendor, moto_server: str, monkeypatch: pytest.MonkeyPatch, cli: Any
) -> dict[str, Any]:
    """A key in a file and in Secrets Manager (the session's moto server), rotated once."""
    import boto3

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    secret_id = f"bad-input/{tmp_path.name}"
    aws = f'{{type: aws, secret_id: "{secret_id}", region: us-east-1, endpoint_url: "{moto_server}", field: KEY}}'
    spec = write_spec(tmp_path, vendor.url, [FILE_TARGETS[0], aws])
    assert cli("-f", spec, "apply", "--output", "json").code == 0
    client = boto3.client("secretsmanager", endpoint_url=moto_server, region_name="us-east-1")
    return {"spec": spec, "secret_id": secret_id, "client": client}


def test_aws_value_not_json_where_field_is_set(
    tmp_path: Path, cli: Any, vendor: GarbageVendor, aws_world: dict[str, Any]
) -> None:
    """A plain-text secret where a JSON field is declared: named, nothing minted or written."""
    client, secret_id = aws_world["client"], aws_world["secret_id"]
    client.put_secret_value(SecretId=secret_id, SecretString="just-some-text")
    minted = len(vendor.agent_keys())
    assert_failed_cleanly(
        cli("-f", aws_world["spec"], "rotate", "payments", "--output", "json"), "not a JSON object", code=1
    )
    assert len(vendor.agent_keys()) == minted
    current = client.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")["SecretString"]
    assert current == "just-some-text"


def test_aws_without_credentials(
    tmp_path: Path,
    cli: Any,
    vendor: GarbageVendor,
    aws_world: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No AWS credentials anywhere: access is denied by name, nothing minted."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    minted = len(vendor.agent_keys())
    assert_failed_cleanly(
        cli("-f", aws_world["spec"], "rotate", "payments", "--output", "json"),
        "no usable AWS credentials",
        code=1,
    )
    assert len(vendor.agent_keys()) == minted


def test_aws_secret_scheduled_for_deletion(
    tmp_path: Path, cli: Any, vendor: GarbageVendor, aws_world: dict[str, Any]
) -> None:
    """A secret someone scheduled for deletion: named, not recreated, nothing minted."""
    aws_world["client"].delete_secret(SecretId=aws_world["secret_id"], RecoveryWindowInDays=7)
    minted = len(vendor.agent_keys())
    assert_failed_cleanly(
        cli("-f", aws_world["spec"], "rotate", "payments", "--output", "json"),
        "scheduled for deletion",
        code=1,
    )
    assert len(vendor.agent_keys()) == minted
    aws_world["client"].restore_secret(SecretId=aws_world["secret_id"])
    assert_safe_after_next_pass(cli, vendor, tmp_path, aws_world["spec"])


def _stage_a_rotation(tmp: Path, spec: str) -> str:
    """Mint and stage a new key everywhere, stopping before the promote; returns its value."""
    with Engine(load_rotation_file(Path(spec)), base_dir=tmp, settings=Settings()) as engine:
        result = engine.reconcile("payments", force=True, stop_before=("promote",))
        assert result.phase == "staged", result
        pending = engine.stores("payments")[0].read().pending
    assert pending is not None
    return pending.value.reveal()


def _delete_file_secret(world: dict[str, Any], tmp: Path) -> None:
    for path in (tmp / "secrets").glob("a.env*"):
        path.unlink()


def _delete_aws_secret(world: dict[str, Any], tmp: Path) -> None:
    world["client"].delete_secret(SecretId=world["secret_id"], ForceDeleteWithoutRecovery=True)


def _delete_vault_secret(world: dict[str, Any], tmp: Path) -> None:
    world["hvac"].secrets.kv.v2.delete_metadata_and_all_versions(path=world["path"])


DELETIONS = {
    "file": (None, _delete_file_secret),
    "aws": ("aws_world", _delete_aws_secret),
    "vault": ("vault_world", _delete_vault_secret),
}


@pytest.mark.parametrize(
    "kind", [pytest.param(k, marks=pytest.mark.openbao) if k == "vault" else k for k in sorted(DELETIONS)]
)
def test_secret_deleted_mid_rotation(
    tmp_path: Path, cli: Any, vendor: GarbageVendor, request: pytest.FixtureRequest, kind: str
) -> None:
    """A target's secret deleted between stage and promote: the next pass rebuilds it, quietly and safely."""
    fixture, delete = DELETIONS[kind]
    world = request.getfixturevalue(fixture) if fixture else {"spec": write_spec(tmp_path, vendor.url)}
    spec = world["spec"]
    if fixture is None:
        assert cli("-f", spec, "apply", "--output", "json").code == 0
    old = current_keys(tmp_path, spec)[0]
    new = _stage_a_rotation(tmp_path, spec)
    delete(world, tmp_path)
    result = cli("-f", spec, "apply", "--wait", "--output", "json")
    assert result.code == 0 and result.err_lines == [], result
    assert current_keys(tmp_path, spec) == [new, new]
    assert old is not None and not vendor.emulator.key_accepted(old) and vendor.emulator.key_accepted(new)
    assert [k["prefix"] for k in vendor.agent_keys(active=True)] == [new[:13]]


class Meddler:
    """A store whose secret another writer changes just before the rotator's guarded write."""

    def __init__(self, store: SecretStore, meddle: Callable[[], None]) -> None:
        self.store, self.meddle, self.done = store, meddle, False

    @property
    def name(self) -> str:
        return self.store.name

    def read(self) -> TargetState:
        return self.store.read()

    def stage(self, value: Secret, stamp: Stamp, *, expected: str | None) -> None:
        if expected is not None and not self.done:
            self.done = True
            self.meddle()
        self.store.stage(value, stamp, expected=expected)

    def promote(self, attempt: str, promoted_at: datetime) -> None:
        self.store.promote(attempt, promoted_at)

    def check_access(self) -> None:
        self.store.check_access()


@pytest.mark.parametrize("kind", ["file", pytest.param("vault", marks=pytest.mark.openbao)])
def test_check_and_set_conflict(
    tmp_path: Path, cli: Any, vendor: GarbageVendor, request: pytest.FixtureRequest, kind: str
) -> None:
    """Another writer changes a secret between the rotator's read and its write: nothing is
    overwritten, nothing revoked, and the next pass keeps the other writer's change."""
    from providers import open_store

    if kind == "file":
        spec = write_spec(tmp_path, vendor.url)
        assert cli("-f", spec, "apply", "--output", "json").code == 0
        path = tmp_path / "secrets/b.json"

        def meddle() -> None:
            path.write_text(json.dumps({**json.loads(path.read_text()), "region": "eu"}))

        def other() -> Any:
            return json.loads(path.read_text())
    else:
        world = request.getfixturevalue("vault_world")
        spec = world["spec"]

        def meddle() -> None:
            world["hvac"].secrets.kv.v2.create_or_update_secret(
                path=world["path"], secret={**_vault_data(world), "region": "eu"}
            )

        def other() -> Any:
            return _vault_data(world)

    old = current_keys(tmp_path, spec)[0]
    rotation = load_rotation_file(Path(spec))
    second = rotation.keys["payments"].targets[1]

    def stores(target: Any, *, base_dir: Path) -> SecretStore:
        store = open_store(target, base_dir=base_dir)
        return Meddler(store, meddle) if target == second else store

    with Engine(rotation, base_dir=tmp_path, settings=Settings(), store_factory=stores) as engine:
        result = engine.apply(["payments"], force=True)[0]
    assert result.outcome == "failed" and "\n" not in result.message, result
    assert re.search(r"changed (by another writer )?since it was read", result.message), result.message
    assert other()["region"] == "eu" and other()["api_key"] == old
    assert old is not None and vendor.emulator.key_accepted(old)
    assert_safe_after_next_pass(cli, vendor, tmp_path, spec)
    assert other()["region"] == "eu" and other()["api_key"] != old
