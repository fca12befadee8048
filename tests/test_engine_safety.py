"""Engine safety in decide and act (issue 10 items 2, 3, 6, 7; issue 11 items 8 and 11).

Each case runs on real parts: the vendor emulator over loopback HTTP, file targets, moto for
AWS and a real OpenBao server for Vault.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from rotator.abc import Capabilities, Issuer, TargetState, VendorKey, parse_time
from rotator.engine import faults
from rotator.engine.decide import decide
from rotator.engine.model import Observation, TargetObs, attempt_name
from rotator.engine.runner import Engine
from rotator.sandbox.emulator import EmulatorServer
from rotator.secret import Secret
from rotator.spec import Settings, VerifyPolicy, load_rotation_file
from rotator.vendors import make_issuer
from tests.conftest import run_cli
from tests.e2e_helpers import (
    ADMIN_ENV,
    adjutor_app_yaml,
    agent_keys,
    journal,
    read_dotenv_key,
    write_rotation_file,
    write_spec,
)
from tests.harnesses.vault import OpenBaoServer

FAST = Settings(retry_initial=0.01, probe_timeout=2)
FAST_ENV = {"ROTATOR_RETRY_INITIAL": "0.01", "ROTATOR_PROBE_TIMEOUT": "2"}


def _engine(path: Path, **kw: Any) -> Engine:
    return Engine(load_rotation_file(path), base_dir=path.parent, settings=FAST, **kw)


def _app_spec(tmp_path: Path, emulator: EmulatorServer, app_id: str, targets: list[str]) -> Path:
    return write_rotation_file(tmp_path, adjutor_app_yaml(emulator.url, app_id, targets), secrets=False)


# --------------------------------------------------------------------------- issue 10 item 2


def _secret_id(tmp_path: Path) -> str:
    """A name no other test on the shared moto server uses."""
    return f"safety/{abs(hash(str(tmp_path))):x}"


def _aws_world(
    tmp_path: Path, emulator: EmulatorServer, moto_server: str, admin: str
) -> tuple[Path, dict[str, str], Any]:
    """One key whose only target is a Secrets Manager secret on the moto server."""
    import boto3

    secret_id = _secret_id(tmp_path)
    env = {
        ADMIN_ENV: admin,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        **FAST_ENV,
    }
    path = write_spec(
        tmp_path,
        emulator,
        targets=0,
        extra=(
            f'      - {{type: aws, secret_id: "{secret_id}", region: us-east-1, '
            f'endpoint_url: "{moto_server}", field: ADJUDON_API_KEY}}\n'
        ),
    )
    client = boto3.client(
        "secretsmanager",
        endpoint_url=moto_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    return path, env, client


def _apply_then_lose_the_target(
    tmp_path: Path,
    emulator: EmulatorServer,
    moto_server: str,
    admin: str,
    lose: Callable[[Path, Any, str], None],
) -> None:
    path, env, sm = _aws_world(tmp_path, emulator, moto_server, admin)
    first = run_cli("apply", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    secret_id = _secret_id(tmp_path)
    stored = json.loads(sm.get_secret_value(SecretId=secret_id)["SecretString"])["ADJUDON_API_KEY"]
    used = httpx.post(  # a consumer sends a trace with the stored key
        f"{emulator.url}/api/v1/traces",
        json={"event": "consumer"},
        headers={"Authorization": f"Bearer {stored}"},
    )
    assert used.status_code < 300, used.status_code
    lose(path, sm, secret_id)

    proc = run_cli("apply", cwd=tmp_path, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out
    assert "renamed or its secret deleted" in out and "last used" in out
    assert emulator.emulator.key_accepted(stored), "a key consumers still use was revoked"
    assert [k["prefix"] for k in agent_keys(emulator, active=True)] == [stored[:13]]
    assert not any(e["event"] == "orphan-revoked" for e in journal(tmp_path))
    assert stored not in out


def test_renamed_target_holds_instead_of_revoking(
    tmp_path: Path, emulator: EmulatorServer, moto_server: str, admin: str
) -> None:
    """A target whose secret_id changed: the key it held, still used, is held, not revoked."""

    def rename(path: Path, sm: Any, secret_id: str) -> None:
        path.write_text(path.read_text().replace(secret_id, secret_id + "-renamed"))

    _apply_then_lose_the_target(tmp_path, emulator, moto_server, admin, rename)


def test_deleted_secret_holds_instead_of_revoking(
    tmp_path: Path, emulator: EmulatorServer, moto_server: str, admin: str
) -> None:
    """A target whose secret was deleted: the key it held, still used, is held, not revoked."""

    def delete(path: Path, sm: Any, secret_id: str) -> None:
        sm.delete_secret(SecretId=secret_id, ForceDeleteWithoutRecovery=True)

    _apply_then_lose_the_target(tmp_path, emulator, moto_server, admin, delete)


def test_orphan_rule_needs_no_stage_and_no_use() -> None:
    """decide: an unheld rotator key is an orphan only when never stored and never used."""
    t0 = datetime(2026, 11, 1, tzinfo=UTC)

    def world(used: datetime | None, stored: frozenset[str]) -> Observation:
        key = VendorKey("key_1", "adj_agent_000", attempt_name("k", "a1"), "active", t0, used)
        return Observation(
            key="k",
            now=t0 + timedelta(hours=1),
            vendor=(key,),
            targets=(TargetObs("t0", TargetState(None, None)),),
            capabilities=Capabilities(max_active=2, overlap=True, prefix_len=13),
            strategy="overlap",
            policy=VerifyPolicy(),
            max_age=timedelta(days=30),
            stored_attempts=stored,
        )

    assert decide(world(None, frozenset())).action == "revoke"
    for case in (world(t0 + timedelta(minutes=5), frozenset()), world(None, frozenset({"a1"}))):
        d = decide(case)
        assert (d.action, d.key_id) == ("hold", "key_1"), d
        assert "renamed or its secret deleted" in d.reason


# --------------------------------------------------------------------------- issue 10 item 3


def _break_dir(directory: Path) -> Callable[[str], None]:
    """A checkpoint hook that removes a file target's directory: every write there fails."""

    def hook(key: str) -> None:
        shutil.rmtree(directory)

    return hook


def test_cutover_store_failure_after_reset_reaches_healthy_targets(
    tmp_path: Path,
    emulator: EmulatorServer,
    openbao_server: OpenBaoServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first target fails every write after the reset: the vault target still gets the new
    key at once, the run says where it is safe, and the next pass fills the first target."""
    monkeypatch.setenv("SAFETY_VAULT_TOKEN", openbao_server.root_token)
    secret = _secret_id(tmp_path)
    raw = emulator.emulator.create_app("app_3")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets/app.key").write_text(raw + "\n")
    path = _app_spec(
        tmp_path,
        emulator,
        "app_3",
        [
            "{type: file, path: secrets/app.key}",
            f'{{type: vault, url: "{openbao_server.url}", mount: secret, path: "{secret}", '
            "field: api_key, auth: {token_env: SAFETY_VAULT_TOKEN}}",
        ],
    )

    def in_vault() -> str:
        answer = openbao_server.client().secrets.kv.v2.read_secret_version(
            path=secret, mount_point="secret", raise_on_deleted_version=True
        )
        return str(answer["data"]["data"]["api_key"])

    with _engine(path) as engine:
        adopt = engine.apply(["app"])[0]
        assert (adopt.outcome, adopt.steps) == ("ok", ["stage"]), adopt
        assert in_vault() == raw
        with faults.hooked("after-reset", _break_dir(tmp_path / "secrets")):
            result = engine.apply(["app"], force=True)[0]
        assert result.outcome == "failed" and result.steps == [], result
        assert "safe in vault:" in result.message and "the next pass" in result.message
        new = in_vault()
        assert new != raw and emulator.emulator.key_accepted(new)
        assert not emulator.emulator.key_accepted(raw)
        reset = [e for e in journal(tmp_path) if e["event"] == "reset"][-1]
        assert reset["details"]["failed"] == ["file:secrets/app.key"], reset
        (tmp_path / "secrets").mkdir()  # the store is back
        caught_up = engine.apply(["app"])[0]
    assert caught_up.outcome == "ok" and caught_up.steps == ["stage"], caught_up
    assert (tmp_path / "secrets/app.key").read_text().strip() == new
    assert new not in result.message + caught_up.message
    assert not any(new in w or raw in w for w in _state_files(tmp_path))


def test_cutover_with_no_store_left_after_reset_holds_loudly(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    """No target can take the reset's key: held (exit 3) with one line saying the app is down
    and what to do."""
    raw = emulator.emulator.create_app("app_4")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets/app.key").write_text(raw + "\n")
    path = _app_spec(tmp_path, emulator, "app_4", ["{type: file, path: secrets/app.key}"])
    with _engine(path) as engine, faults.hooked("after-reset", _break_dir(tmp_path / "secrets")):
        result = engine.apply(["app"], force=True)[0]
    assert result.outcome == "held", result
    assert result.message.startswith("APP DOWN: the app's key was reset")
    assert "no store could take the new one" in result.message and "bootstrap" in result.message
    assert "\n" not in result.message
    assert not emulator.emulator.key_accepted(raw)
    assert [e["event"] for e in journal(tmp_path)][-2:] == ["reset-lost", "held"]


def test_file_check_access_really_writes(tmp_path: Path) -> None:
    """The file store's access check writes and syncs real bytes: a file size limit (as a
    full disk would) fails the check, before any reset."""
    (tmp_path / "app.key").write_text("sk_live_" + "a" * 40 + "\n")
    script = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from providers import open_store\n"
        "from rotator.errors import StoreError\n"
        "from rotator.spec import FileTarget\n"
        "store = open_store(FileTarget(type='file', path='app.key'), base_dir=Path('.'))\n"
        "store.read()\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))\n"
        "try:\n"
        "    store.check_access()\n"
        "except StoreError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "checking access failed: File too large" in proc.stdout
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp left


# --------------------------------------------------------------------------- issue 10 item 7


def test_corrupt_stored_value_is_not_adopted(tmp_path: Path, emulator: EmulatorServer, admin: str) -> None:
    """A stored value with a key's prefix but a damaged tail (and no stamp) is probed, shown as
    broken, and replaced by a fresh key rolled out, never adopted as current."""
    write_spec(tmp_path, emulator, drain="0s", propagation="0s", targets=1)
    env = {ADMIN_ENV: admin, **FAST_ENV}
    assert run_cli("apply", cwd=tmp_path, env=env).returncode == 0
    target = tmp_path / "secrets/a.env"
    good = read_dotenv_key(target)
    assert good is not None
    bad = good[:-1] + ("b" if good[-1] != "b" else "c")
    (tmp_path / "secrets/a.env.rotator.json").unlink()  # the stamp sidecar
    target.write_text(f"ADJUDON_API_KEY={bad}\n")
    assert not emulator.emulator.key_accepted(bad)

    status = run_cli("status", cwd=tmp_path, env=env)
    out = status.stdout + status.stderr
    assert "current everywhere" not in out, out
    assert "broken" in out and "BROKEN" in out, out
    as_json = run_cli("status", "--output", "json", cwd=tmp_path, env=env)
    row = json.loads(as_json.stdout)[0]
    assert row["next"] == "mint" and row["targets"][0]["current"]["broken"] is True, row

    proc = run_cli("apply", "--wait", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    new = read_dotenv_key(target)
    assert new not in (None, good, bad) and emulator.emulator.key_accepted(new or "")
    assert [k["prefix"] for k in agent_keys(emulator, active=True)] == [(new or "")[:13]]
    for text in (out, as_json.stdout, proc.stdout, proc.stderr):
        assert bad not in text and good not in text


# --------------------------------------------------------------------------- issue 10 item 6


class _Stubborn:
    """A consumer that keeps calling the vendor with the key it read once, until stopped."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.calls = self.auth_failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self._stop.is_set():
                r = client.post(
                    "/api/v1/traces",
                    json={"event": "stubborn"},
                    headers={"Authorization": f"Bearer {self.key}"},
                )
                self.calls += 1
                self.auth_failures += r.status_code == 401
                self._stop.wait(0.1)

    def __enter__(self) -> _Stubborn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.mark.parametrize("skew", [30.0, -30.0], ids=["fast", "slow"])
def test_clock_skew_fast_and_slow_never_revokes_a_used_key(
    tmp_path: Path, emulator: EmulatorServer, admin: str, skew: float
) -> None:
    """With the rotator's clock 30 s off the vendor's either way (propagation 1 s), an old key
    still in use is never revoked, and the rotation completes once its consumer has moved."""
    path = write_spec(tmp_path, emulator, drain="1s", propagation="1s", targets=1)
    with _engine(path) as engine:
        assert engine.apply(["payments"])[0].outcome == "ok"
    old = read_dotenv_key(tmp_path / "secrets/a.env")
    assert old is not None

    def skewed() -> datetime:
        return datetime.now(UTC) + timedelta(seconds=skew)

    with _engine(path, clock=skewed) as engine, _Stubborn(emulator.url, old) as consumer:
        first = engine.apply(["payments"], force=True)[0]
        assert first.outcome == "waiting" and first.steps == ["mint", "promote"], first
        deadline = time.monotonic() + 4.0  # propagation + drain, twice over
        while time.monotonic() < deadline:
            result = engine.apply(["payments"])[0]
            assert result.outcome == "waiting" and "revoke" not in result.steps, result
            time.sleep(0.25)
        assert emulator.emulator.key_accepted(old), "an old key still in use was revoked"
        consumer.stop()
        assert consumer.calls > 20 and consumer.auth_failures == 0
        done = engine.apply(["payments"], wait=True)[0]
    assert done.outcome == "ok" and done.steps == ["revoke"], done
    assert not emulator.emulator.key_accepted(old)
    new = read_dotenv_key(tmp_path / "secrets/a.env")
    assert new is not None and new != old and emulator.emulator.key_accepted(new)
    promoted = [e for e in journal(tmp_path) if e["event"] == "promoted"][-1]
    vendor_now = datetime.now(UTC)  # the emulator's clock is the real one
    assert abs((parse_time(promoted["details"]["promoted_at"]) - vendor_now).total_seconds()) < 15


def test_emulator_answers_carry_its_clock_in_date() -> None:
    """The emulator's Date header is its own clock, which the client learns as vendor time."""
    from rotator.sandbox.emulator import Emulator
    from rotator.vendors.adjudon import AdjudonIssuer

    then = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)
    emu = Emulator(clock=lambda: then)
    raw = emu.bootstrap_workspace_key()
    with (
        EmulatorServer(emu) as server,
        AdjudonIssuer("emu", server.url, kind="workspace", credential=lambda: Secret(raw)) as issuer,
    ):
        assert issuer.vendor_now() is None
        issuer.list_keys()
        learnt = issuer.vendor_now()
    assert learnt is not None and abs((learnt - then).total_seconds()) < 3


def test_vendor_offset_keeps_the_tightest_sample_and_follows_a_clock_step() -> None:
    """Date samples (whole seconds, stamped before the answer travels) never overstate the
    vendor's lead: the largest one is kept, until a sample jumps by more than 2 s."""
    from rotator.vendors._http import VendorHTTP

    local = datetime(2030, 1, 1, 12, 0, 0, 600000, tzinfo=UTC)
    dates = iter(
        [
            "Tue, 01 Jan 2030 12:00:30 GMT",  # vendor 29.4 s ahead (truncated)
            "Tue, 01 Jan 2030 12:00:31 GMT",  # 30.4 s: tighter, kept
            "Tue, 01 Jan 2030 12:00:30 GMT",  # 29.4 s again: the tighter one stays
            "Tue, 01 Jan 2030 11:59:50 GMT",  # -10.6 s: the vendor's clock was set
        ]
    )

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"data": {}}, headers={"Date": next(dates)})

    http = VendorHTTP(
        "emu",
        "https://vendor.test",
        http=httpx.Client(transport=httpx.MockTransport(answer)),
        clock=lambda: local,
    )
    assert http.vendor_now() is None
    seen = []
    for _ in range(4):
        http.call("GET", "/health", credential=lambda: Secret("adj_live_" + "ab" * 32))
        now = http.vendor_now()
        assert now is not None
        seen.append(round((now - local).total_seconds(), 1))
    assert seen == [29.4, 30.4, 30.4, -10.6]


# --------------------------------------------------------------------------- issue 11 item 11


class _CorruptReset(httpx.BaseTransport):
    """Real HTTP to the emulator; the answer to a reset comes back with its key damaged."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.sent: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        if request.method != "POST" or not request.url.path.endswith("/key/reset"):
            return response
        body = json.loads(response.read())
        body["data"]["api_key"] = body["data"]["api_key"][:-1] + "!"
        self.sent.append(body["data"]["api_key"])
        return httpx.Response(response.status_code, json=body)

    def close(self) -> None:
        self._inner.close()


def _state_files(tmp_path: Path) -> list[str]:
    """Everything the rotator wrote under state_dir (journal, leases)."""
    return [p.read_text(errors="replace") for p in (tmp_path / "state").rglob("*") if p.is_file()]


def _issuers_over(transport: httpx.BaseTransport) -> Callable[..., Issuer]:
    def factory(*args: Any, **kw: Any) -> Issuer:
        return make_issuer(*args, http=httpx.Client(transport=transport), **kw)

    return factory


def test_malformed_reset_answer_holds_exit_3(tmp_path: Path, emulator: EmulatorServer) -> None:
    """A reset whose answer carries a malformed key is held with the recovery steps, not failed:
    the vendor already revoked the old key."""
    raw = emulator.emulator.create_app("app_11")
    (tmp_path / "app.key").write_text(raw + "\n")
    path = _app_spec(tmp_path, emulator, "app_11", ["{type: file, path: app.key}"])
    corrupt = _CorruptReset()
    with _engine(path, issuer_factory=_issuers_over(corrupt)) as engine:
        result = engine.apply(["app"], force=True)[0]
    assert result.outcome == "held", result.message
    assert "revoked the app's key" in result.message and "bootstrap" in result.message
    assert not emulator.emulator.key_accepted(raw)  # the reset did happen
    assert journal(tmp_path)[-1]["event"] == "held"
    assert len(corrupt.sent) == 1
    written = _state_files(tmp_path)
    for canary in (raw, corrupt.sent[0], corrupt.sent[0][:-1]):
        assert canary not in result.message and not any(canary in w for w in written)


# --------------------------------------------------------------------------- issue 11 item 8


def test_overlap_checks_target_access_before_minting(
    tmp_path: Path,
    emulator: EmulatorServer,
    admin: str,
    openbao_server: OpenBaoServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A target the runner may read but not write stops an overlap rotation before the mint:
    no second key at the vendor, every target keeps the old key."""
    secret = _secret_id(tmp_path)
    monkeypatch.setenv("SAFETY_VAULT_TOKEN", openbao_server.root_token)
    path = write_spec(
        tmp_path,
        emulator,
        targets=1,
        extra=(
            f'      - {{type: vault, url: "{openbao_server.url}", mount: secret, path: "{secret}", '
            "field: api_key, auth: {token_env: SAFETY_VAULT_TOKEN}}\n"
        ),
    )
    with _engine(path) as engine:
        assert engine.apply(["payments"])[0].outcome == "ok"
    old = read_dotenv_key(tmp_path / "secrets/a.env")
    openbao_server.client().sys.create_or_update_policy(
        name="safety-read-only",
        policy=(
            f'path "secret/data/{secret}" {{ capabilities = ["read"] }}\n'
            f'path "secret/metadata/{secret}" {{ capabilities = ["read"] }}\n'
        ),
    )
    monkeypatch.setenv("SAFETY_VAULT_TOKEN", openbao_server.token("safety-read-only"))
    with _engine(path) as engine:
        result = engine.apply(["payments"], force=True)[0]
    assert result.outcome == "failed" and result.steps == [], result
    assert "lacks update" in result.message
    assert len(agent_keys(emulator)) == 1  # nothing minted
    assert read_dotenv_key(tmp_path / "secrets/a.env") == old
    assert not any(e["event"] == "minted" for e in journal(tmp_path)[1:])
