"""One rotation fanned out to file, AWS (moto server), Vault (OpenBao) and GCP (fake gRPC
server) at once, each with a live consumer reading its own store and calling the vendor;
then a store that goes down during roll-out."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import grpc
import httpx
import pytest

from providers import open_store
from providers.gcp import GcpStore
from rotator.abc import SecretStore
from rotator.engine.decide import decide
from rotator.engine.runner import Engine
from rotator.engine.status import describe
from rotator.sandbox.emulator import EmulatorServer
from rotator.spec import GcpTarget, Settings, TargetSpec, load_rotation_file
from tests.e2e_helpers import (
    ADMIN_ENV,
    adjudon_issuer,
    agent_keys,
    journal,
    read_dotenv_key,
    rotation_yaml,
    write_rotation_file,
)
from tests.fakes.gcp_secret_manager import FakeSecretManager
from tests.harnesses.vault import OpenBaoServer

FAST = Settings(retry_initial=0.01, probe_timeout=5)


@dataclass
class StoreConsumer:
    """Re-reads its store every half second and calls the vendor with what it finds."""

    name: str
    read: Callable[[], str | None]
    url: str
    requests: int = 0
    auth_failures: int = 0
    keys_seen: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        key, read_at = None, 0.0
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self._stop.is_set():
                if time.monotonic() - read_at >= 0.5:
                    key, read_at = self.read() or key, time.monotonic()
                if key:
                    if key[:13] not in self.keys_seen:
                        self.keys_seen.append(key[:13])
                    r = client.post(
                        "/api/v1/traces", json={"from": self.name}, headers={"Authorization": f"Bearer {key}"}
                    )
                    self.requests += 1
                    self.auth_failures += r.status_code == 401
                self._stop.wait(0.05)

    def __enter__(self) -> StoreConsumer:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)


@pytest.fixture
def world(
    tmp_path: Path,
    emulator: EmulatorServer,
    moto_server: str,
    openbao_server: OpenBaoServer,
    gcp_server: FakeSecretManager,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, Any]:
    """A rotation file whose one key has a target in each of the four stores."""
    monkeypatch.setenv(ADMIN_ENV, emulator.emulator.bootstrap_workspace_key())
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "VAULT_TOKEN": openbao_server.root_token,
    }.items():
        monkeypatch.setenv(name, value)
    suffix = tmp_path.name[-12:].replace("_", "-")
    targets = [
        "{type: file, path: secrets/payments.env, format: dotenv, field: ADJUDON_API_KEY}",
        f'{{type: aws, secret_id: "fanout/{suffix}", region: us-east-1, endpoint_url: "{moto_server}", field: ADJUDON_API_KEY}}',
        f'{{type: vault, url: "{openbao_server.url}", mount: secret, path: "fanout/{suffix}", field: api_key}}',
        f'{{type: gcp, project: p, secret: "fanout-{suffix}", endpoint: "{gcp_server.address}", consumers_read: alias}}',
    ]
    path = write_rotation_file(
        tmp_path,
        rotation_yaml(
            defaults={"verify": "{drain: 1s, propagation: 1s, timeout: 60s}"},
            issuers={"emu": adjudon_issuer(emulator.url)},
            keys={"payments": {"issuer": "emu", "kind": "agent", "agent_id": "payments", "targets": targets}},
        ),
    )
    sm = boto3.client("secretsmanager", endpoint_url=moto_server, region_name="us-east-1")
    vault = openbao_server.client()
    gcp = gcp_server.client()

    def read_aws() -> str | None:
        try:
            text = sm.get_secret_value(SecretId=f"fanout/{suffix}", VersionStage="AWSCURRENT")["SecretString"]
        except sm.exceptions.ResourceNotFoundException:
            return None
        return str(json.loads(text)["ADJUDON_API_KEY"])

    def read_vault() -> str | None:
        try:
            data = vault.secrets.kv.v2.read_secret_version(
                path=f"fanout/{suffix}", raise_on_deleted_version=True
            )
        except Exception:  # noqa: BLE001 - not there yet
            return None
        return str(data["data"]["data"]["api_key"])

    def read_gcp() -> str | None:
        try:
            answer = gcp.access_secret_version(name=f"projects/p/secrets/fanout-{suffix}/versions/current")
        except Exception:  # noqa: BLE001 - not there yet
            return None
        return str(answer.payload.data.decode())

    return {
        "path": path,
        "server": emulator,
        "gcp_server": gcp_server,
        "readers": {
            "file": lambda: read_dotenv_key(tmp_path / "secrets/payments.env"),
            "aws": read_aws,
            "vault": read_vault,
            "gcp": read_gcp,
        },
    }


def test_fan_out_to_four_stores_breaks_no_consumer(world: dict[str, Any]) -> None:
    """One rotation lands in all four stores while four consumers keep calling: 0 auth failures."""
    path, server, readers = world["path"], world["server"], world["readers"]
    engine = Engine(load_rotation_file(path), base_dir=path.parent, settings=FAST)
    first = engine.apply(["payments"])[0]
    assert first.outcome == "ok", first.message
    old = {name: read() for name, read in readers.items()}
    assert len(set(old.values())) == 1 and None not in old.values()

    consumers = [StoreConsumer(name, read, server.url) for name, read in readers.items()]
    for c in consumers:
        c.__enter__()
    try:
        time.sleep(0.6)
        result = engine.apply(["payments"], force=True, wait=True)[0]
        time.sleep(0.7)
    finally:
        for c in consumers:
            c.__exit__()
    assert result.outcome == "ok", result.message
    assert result.steps == ["mint", "stage", "promote", "revoke"]
    new = {name: read() for name, read in readers.items()}
    assert len(set(new.values())) == 1 and set(new.values()) != set(old.values())
    assert not server.emulator.key_accepted(next(iter(old.values())))
    retired = [e for e in journal(path.parent) if e["event"] == "retired"]
    assert len(retired) == 1 and retired[0]["details"]["target"].startswith("gcp:")
    (old_version,) = retired[0]["details"]["versions"]
    gcp = world["gcp_server"].client()
    name = retired[0]["details"]["target"].removeprefix("gcp:").replace("p/", "projects/p/secrets/", 1)
    assert gcp.get_secret_version(name=f"{name}/versions/{old_version}").state.name == "DISABLED"
    for c in consumers:
        assert c.auth_failures == 0, c.name
        assert c.requests > 10, c.name
        assert len(c.keys_seen) == 2, (c.name, c.keys_seen)


def test_store_down_during_rollout(world: dict[str, Any]) -> None:
    """GCP goes down mid roll-out: no revoke, status names the lagging store, next pass completes."""
    path, server, readers = world["path"], world["server"], world["readers"]
    gcp_server: FakeSecretManager = world["gcp_server"]

    def stores(target: TargetSpec, *, base_dir: Path) -> SecretStore:
        if isinstance(target, GcpTarget):  # same store, a short retry budget to keep the test quick
            return GcpStore(target, retry_budget=1.0, timeout=2.0)
        return open_store(target, base_dir=base_dir)

    spec = load_rotation_file(path)
    engine = Engine(spec, base_dir=path.parent, settings=FAST, store_factory=stores)
    assert engine.apply(["payments"])[0].outcome == "ok"
    old = readers["file"]()

    def outage(key: str, decision: Any) -> None:
        if decision.action == "stage":  # after the mint reached the first store
            gcp_server.inject(grpc.StatusCode.UNAVAILABLE, times=10_000)

    failed = engine.apply(["payments"], force=True, progress=outage)[0]
    assert failed.outcome == "failed"
    assert "gcp:p/fanout-" in failed.message
    assert old is not None and server.emulator.key_accepted(old)
    assert len(agent_keys(server, active=True)) == 2  # old key kept alive beside the new one
    obs = engine.observe("payments")
    view = describe(obs, decide(obs))
    assert any(name.startswith("gcp:") for name in view["lagging"])
    assert view["phase"] == "failed"

    gcp_server.heal()
    done = engine.apply(["payments"], wait=True)[0]
    assert done.outcome == "ok", done.message
    assert "revoke" in done.steps
    new = {name: read() for name, read in readers.items()}
    assert len(set(new.values())) == 1 and old not in new.values()
    assert not server.emulator.key_accepted(old)
    assert len(agent_keys(server, active=True)) == 1
