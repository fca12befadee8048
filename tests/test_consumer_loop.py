"""The loop end to end: mint, roll out, roll the consumers, verify, revoke, with a service that
reads its key once at start (``rotator.sandbox.readonce``) and calls the sandbox vendor every
0.2 s. Without ``consumers:`` its rotation holds at its timeout with the old key alive; with a
``command`` consumer, or a ``webhook`` consumer whose receiver restarts it, the same rotation
completes with no failed call. Last, the kubernetes consumer and the github target as a
rotation file declares them, over their fake APIs. The real command line, in this process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from providers.consumers.kubernetes import ROLL
from rotator.abc import parse_time
from rotator.sandbox.emulator import EmulatorServer
from rotator.sandbox.readonce import Totals, is_running, read_stats
from tests.conftest import Outcome
from tests.e2e_helpers import (
    VENDOR_CLOCK_SLACK_S,
    adjudon_issuer,
    agent_keys,
    journal,
    read_dotenv_key,
    rotation_yaml,
    write_rotation_file,
)
from tests.fakes.kube_controllers import Rollout, Sync, external_secret
from tests.harnesses.consumer_kubernetes import NAMESPACE as KUBE_NS
from tests.harnesses.consumer_kubernetes import KubernetesConsumerHarness
from tests.harnesses.write_only_github import TOKEN_ENV as GITHUB_TOKEN_ENV
from tests.harnesses.write_only_github import GithubHarness

MODULE = "rotator.sandbox.readonce"
HOOK_ENV = "LOOP_HOOK_SECRET"


class Service:
    """The read-once service's files: it reads ``secrets/service.env`` (the rotation's target)."""

    def __init__(self, server: EmulatorServer, workdir: Path) -> None:
        self.server = server
        self.env_file = workdir / "secrets" / "service.env"
        self.pidfile = workdir / "service.pid"
        self.stats = workdir / "stats"

    def options(self) -> list[str]:
        return [
            *("--env-file", str(self.env_file), "--var", "ADJUDON_API_KEY", "--url", self.server.url),
            *("--pidfile", str(self.pidfile), "--stats", str(self.stats), "--interval", "0.2"),
        ]

    def restart_argv(self) -> list[str]:
        return [sys.executable, "-m", MODULE, "restart", *self.options()]

    def start(self) -> None:
        done = subprocess.run(self.restart_argv(), capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr

    def totals(self) -> Totals:
        return read_stats(self.stats)

    def wait_for(self, what: Callable[[Totals], bool], timeout: float = 15) -> Totals:
        deadline = time.monotonic() + timeout
        while not what(totals := self.totals()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return totals

    def stop(self) -> None:
        for gen in self.totals().running:
            os.kill(gen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while any(is_running(g.pid) for g in self.totals().generations) and time.monotonic() < deadline:
            time.sleep(0.05)


@pytest.fixture
def service(emulator: EmulatorServer, admin: str, tmp_path: Path) -> Iterator[Service]:
    found = Service(emulator, tmp_path)
    try:
        yield found
    finally:
        found.stop()


def _rotation(tmp: Path, server: EmulatorServer, consumers: list[str], timeout: str = "60s") -> Path:
    fields: dict[str, object] = {
        "issuer": "emu",
        "kind": "agent",
        "agent_id": "payments",
        "targets": ["{type: file, path: secrets/service.env, format: dotenv, field: ADJUDON_API_KEY}"],
    }
    if consumers:
        fields["consumers"] = consumers
    text = rotation_yaml(
        defaults={"verify": f"{{drain: 1s, propagation: 1s, timeout: {timeout}}}"},
        issuers={"emu": adjudon_issuer(server.url)},
        keys={"payments": fields},  # type: ignore[dict-item]
    )
    return write_rotation_file(tmp, text)


def _flow(
    cli: Callable[..., Outcome], path: Path, service: Service, *, started_by_rotator: bool
) -> tuple[str, Outcome]:
    """First run (the service started by its consumer, or by hand), then `rotate --wait`."""
    first = cli("-f", str(path), "apply")
    assert first.code == 0, first.out + first.err
    old = read_dotenv_key(service.env_file)
    assert old is not None
    if not started_by_rotator:
        service.start()
    totals = service.wait_for(lambda t: t.accepted >= 5)
    assert len(totals.generations) == 1 and totals.generations[0].prefix == old[:13]
    return old, cli("-f", str(path), "rotate", "payments", "--wait")


def test_without_consumers_the_rotation_holds_with_the_old_key_alive(
    cli: Callable[..., Outcome], emulator: EmulatorServer, service: Service, tmp_path: Path
) -> None:
    """The service never reads the new key: the old key stays in use, the drain times out and
    the rotation holds (exit 3); the old key is still accepted and the service never failed."""
    path = _rotation(tmp_path, emulator, [], timeout="6s")
    old, rotated = _flow(cli, path, service, started_by_rotator=False)
    assert rotated.code == 3, rotated.out + rotated.err
    assert "drain timeout" in rotated.out and "still used" in rotated.out
    assert emulator.emulator.key_accepted(old)
    assert len(agent_keys(emulator, active=True)) == 2
    totals = service.totals()
    assert len(totals.generations) == 1 and totals.generations[0].prefix == old[:13]
    assert totals.auth_failures == 0 and totals.other_failures == 0


def _completed(emulator: EmulatorServer, service: Service, tmp: Path, old: str, rotated: Outcome) -> None:
    assert rotated.code == 0, rotated.out + rotated.err
    new = read_dotenv_key(service.env_file)
    assert new is not None and new != old
    assert not emulator.emulator.key_accepted(old) and emulator.emulator.key_accepted(new)
    totals = service.wait_for(lambda t: t.generations[-1].accepted >= 3)
    assert [g.prefix for g in totals.generations] == [old[:13], new[:13]]
    assert [g.pid for g in totals.running] == [totals.generations[-1].pid]
    assert totals.auth_failures == 0 and totals.other_failures == 0, totals.to_dict()
    assert totals.requests >= 10
    events = journal(tmp)
    rolled = [e for e in events if e["event"] == "rolled"]
    assert len(rolled) == 2  # the first run's, and this rotation's: once per attempt
    assert [e["event"] for e in events if e["event"] in ("promoted", "rolled", "revoked")][-3:] == [
        "promoted",
        "rolled",
        "revoked",
    ]
    for e in events:
        assert new not in str(e) and old not in str(e)


def test_a_command_consumer_restarts_the_service_and_the_rotation_completes(
    cli: Callable[..., Outcome], emulator: EmulatorServer, service: Service, tmp_path: Path
) -> None:
    """The same rotation with a `command` consumer running the service's restart: it completes
    (exit 0), the old key is revoked, and no call of the service was refused."""
    argv = ", ".join(f'"{a}"' for a in service.restart_argv())
    path = _rotation(tmp_path, emulator, [f"{{type: command, argv: [{argv}], timeout: 60s}}"], timeout="6s")
    old, rotated = _flow(cli, path, service, started_by_rotator=True)
    _completed(emulator, service, tmp_path, old, rotated)


@pytest.fixture
def receiver(service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``readonce receive``, restarting the service on each verified delivery; yields its URL."""
    secret = f"whsec_{uuid.uuid4().hex}"
    monkeypatch.setenv(HOOK_ENV, secret)
    port_file, log = tmp_path / "port", tmp_path / "receiver.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", MODULE, "receive", "--secret-env", HOOK_ENV, "--port-file", str(port_file),
             *service.options()],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, HOOK_ENV: secret},
        )  # fmt: skip
    deadline = time.monotonic() + 20
    while not port_file.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert port_file.exists(), log.read_text()
    try:
        yield f"http://127.0.0.1:{port_file.read_text().strip()}/hooks/rotated"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def test_a_webhook_consumer_whose_receiver_restarts_the_service(
    cli: Callable[..., Outcome], emulator: EmulatorServer, service: Service, receiver: str, tmp_path: Path
) -> None:
    """The same rotation with a `webhook` consumer: the receiver verifies the signed delivery and
    restarts the service; the rotation completes with no refused call."""
    hook = f'{{type: webhook, url: "{receiver}", secret: {{env: {HOOK_ENV}}}, timeout: 60s}}'
    path = _rotation(tmp_path, emulator, [hook], timeout="6s")
    old, rotated = _flow(cli, path, service, started_by_rotator=True)
    _completed(emulator, service, tmp_path, old, rotated)


def test_the_drain_starts_after_the_roll(
    cli: Callable[..., Outcome], emulator: EmulatorServer, service: Service, tmp_path: Path
) -> None:
    """A restart slower than propagation + drain: the old key, used until the restart ends, is
    revoked only propagation + drain after the roll, never while the service used it."""
    script = tmp_path / "slow_restart.py"
    script.write_text(
        f"import subprocess, sys, time\ntime.sleep(3)\nsys.exit(subprocess.call({service.restart_argv()!r}))\n"
    )
    hook = f'{{type: command, argv: ["{sys.executable}", "{script}"], timeout: 60s}}'
    path = _rotation(tmp_path, emulator, [hook], timeout="20s")
    old, rotated = _flow(cli, path, service, started_by_rotator=True)
    _completed(emulator, service, tmp_path, old, rotated)
    rolled = [e for e in journal(tmp_path) if e["event"] == "rolled"][-1]
    assert rolled["details"]["seconds"] >= 3.0
    rolled_at = parse_time(rolled["details"]["rolled_at"])
    [old_key] = [k for k in agent_keys(emulator) if k["prefix"] == old[:13]]
    assert parse_time(str(old_key["revoked_at"])) >= rolled_at + timedelta(seconds=2)
    # the service used the old key until its restart ended, after promotion + propagation + drain
    promoted = [e for e in journal(tmp_path) if e["event"] == "promoted"][-1]
    last_used = parse_time(str(old_key["last_used_at"]))
    assert last_used >= parse_time(promoted["details"]["promoted_at"]) + timedelta(seconds=2)
    assert last_used <= rolled_at + timedelta(seconds=VENDOR_CLOCK_SLACK_S)


def test_kubernetes_consumer_and_github_target_through_the_command_line(
    cli: Callable[..., Outcome],
    emulator: EmulatorServer,
    admin: str,
    tmp_path: Path,
    consumer_kubernetes_harness: KubernetesConsumerHarness,
    write_only_github_harness: GithubHarness,
) -> None:
    """The plugins as a rotation file declares them, over their fake APIs on loopback: each
    rotation writes the GitHub secret (opened by the fake's private key: the new key) and then
    force-syncs the ExternalSecret and restarts the Deployment, once per attempt."""
    kube, github = consumer_kubernetes_harness, write_only_github_harness
    name = kube.deployment(Rollout(replicas=2, step=0.05, settle=0.03))
    es = f"{name}-key"
    kube.api.put(external_secret(KUBE_NS, es, target=f"{name}-env", key="API_KEY", remote="prod/payments"))
    kube.api.controllers.syncs[(KUBE_NS, es)] = Sync(source=lambda: {"API_KEY": "synced"}, delay=0.05)
    repo = github.new_repo()
    text = rotation_yaml(
        defaults={"verify": "{drain: 1s, propagation: 1s, timeout: 60s}"},
        issuers={"emu": adjudon_issuer(emulator.url)},
        keys={
            "payments": {
                "issuer": "emu",
                "kind": "agent",
                "agent_id": "payments",
                "targets": [
                    "{type: file, path: secrets/service.env, format: dotenv, field: ADJUDON_API_KEY}",
                    f'{{type: github, repository: {repo}, secret_name: ADJUDON_API_KEY, api_url: "{github.api.url}", '
                    f"token: {{env: {GITHUB_TOKEN_ENV}}}}}",
                ],
                "consumers": [
                    f"{{type: kubernetes, namespace: {KUBE_NS}, name: {name}, external_secret: {es}, "
                    f'kubeconfig: "{kube.kubeconfig}", timeout: 60s}}'
                ],
            }
        },
    )
    path = write_rotation_file(tmp_path, text)
    first = cli("-f", str(path), "apply")
    assert first.code == 0, first.out + first.err
    rotated = cli("-f", str(path), "rotate", "payments", "--wait")
    assert rotated.code == 0, rotated.out + rotated.err
    new = read_dotenv_key(tmp_path / "secrets/service.env")
    assert new is not None and github.api.secret(repo, "ADJUDON_API_KEY", None) == new
    minted = [e["attempt"] for e in journal(tmp_path) if e["event"] == "minted"]
    restarts = kube.api.restart_annotations[("Deployment", KUBE_NS, name)]
    assert [json.loads(a[ROLL])["attempt"] for a in restarts] == minted
    assert [e["details"]["consumer"] for e in journal(tmp_path) if e["event"] == "rolled"] == [
        f"kubernetes:{KUBE_NS}/Deployment/{name}"
    ] * 2
    assert len(agent_keys(emulator, active=True)) == 1
