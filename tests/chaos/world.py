"""The world a chaos run rotates keys in: the vendor emulator, moto and OpenBao behind fault
proxies, file targets, a rotation file with many agent keys fanned out to 1-3 targets of
different kinds, and one consumer per target. Some keys (``readonce``) are also read by a
service that reads its key once at start and is restarted by the key's ``command`` consumer;
those keys also have a write-only target, a GitHub Actions secret on the fake GitHub API."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from providers import open_store
from rotator.abc import TargetState
from rotator.sandbox.emulator import EmulatorServer
from rotator.spec import AwsTarget, VaultTarget, load_rotation_file
from tests.chaos.consumers import Consumer, Reader, ReadOnceService, aws_reader, file_reader, vault_reader
from tests.chaos.proxy import FaultProxy
from tests.chaos.servers import MotoServer, OpenBao, aws_env
from tests.fakes.github_api import FakeGitHub

ADMIN_ENV = "CHAOS_ADJUDON_ADMIN_KEY"
GITHUB_ENV = "CHAOS_GITHUB_TOKEN"
SERVICE_VAR = "ADJUDON_API_KEY"
KINDS = ("vault", "aws", "file")
FILE_FORMATS = (("dotenv", "ADJUDON_API_KEY", ".env"), ("json", "api_key", ".json"), ("raw", None, ".key"))


@dataclass(frozen=True)
class TargetPlan:
    """One target of one key: its line in the rotation file and how its consumer reads it."""

    kind: str
    yaml: str
    where: str
    field: str | None


@dataclass(frozen=True)
class KeyPlan:
    name: str
    agent_id: str
    targets: tuple[TargetPlan, ...]
    """The readable targets each read by a consumer thread."""
    extra: tuple[str, ...] = ()
    """More targets' lines: a read-once key's service file and its GitHub secret."""
    consumers: tuple[str, ...] = ()

    @property
    def readonce(self) -> bool:
        return bool(self.consumers)


def spread(count: int, among: int) -> set[int]:
    """``count`` indices spread evenly over ``range(among)`` (all of them at most)."""
    count = max(0, min(count, among))
    return {j * among // count for j in range(count)} if count else set()


@dataclass
class World:
    """Every server and file of one run. :meth:`start` brings it up, :meth:`stop` down."""

    workdir: Path
    keys: int
    seed: int
    readonce: int = 0
    """How many keys have a read-once service and a ``command`` consumer."""
    service_interval: tuple[float, float] = (0.1, 0.2)
    emulator: EmulatorServer = field(default_factory=EmulatorServer)
    plans: list[KeyPlan] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)
    services: dict[str, ReadOnceService] = field(default_factory=dict)
    github: FakeGitHub | None = None
    github_token: str = field(default="", repr=False)
    admin_key: str = field(default="", repr=False)
    bao: OpenBao | None = None
    moto: MotoServer | None = None
    aws_proxy: FaultProxy | None = None
    vault_proxy: FaultProxy | None = None

    @property
    def spec(self) -> Path:
        return self.workdir / "rotations.yaml"

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    def start(self) -> World:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "secrets").mkdir(exist_ok=True)
        self.emulator.start()
        self.admin_key = self.emulator.emulator.bootstrap_workspace_key("chaos-admin")
        self.moto = MotoServer(self.workdir / "moto").start()
        self.bao = OpenBao(self.workdir / "openbao").start()
        self.aws_proxy = FaultProxy(("127.0.0.1", self.moto.port), seed=self.seed).start()
        self.vault_proxy = FaultProxy(("127.0.0.1", self.bao.port), seed=self.seed + 1).start()
        readonce = spread(self.readonce, self.keys)
        if readonce:
            self.github = FakeGitHub().start()
            self.github_token = self.github.add_token()
        self.plans = [self._plan(i, i in readonce) for i in range(self.keys)]
        return self

    def stop(self) -> None:
        for consumer in self.consumers:
            consumer.stop()
        for service in self.services.values():
            service.stop()
        for part in (self.aws_proxy, self.vault_proxy, self.bao, self.moto, self.emulator, self.github):
            if part is not None:
                part.stop()

    def env(self) -> dict[str, str]:
        """The environment of every rotator process: credentials, short retries."""
        assert self.bao is not None
        base = {k: v for k, v in os.environ.items() if not k.startswith(("ROTATOR_", "AWS_", "VAULT_"))}
        return {
            **base,
            **aws_env(),
            "VAULT_TOKEN": self.bao.root_token,
            ADMIN_ENV: self.admin_key,
            GITHUB_ENV: self.github_token,
            "ROTATOR_RETRY_INITIAL": "0.05",
            "ROTATOR_RETRY_ATTEMPTS": "4",
            "ROTATOR_RETRY_MAX_TOTAL": "6",
            "ROTATOR_PROBE_TIMEOUT": "6",
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    # ------------------------------------------------------------------ the rotation file

    def _plan(self, i: int, readonce: bool = False) -> KeyPlan:
        assert self.aws_proxy is not None and self.vault_proxy is not None
        name = f"k{i:02d}"
        targets = []
        for j in range(1 + i % 3):
            kind = KINDS[(i + j) % len(KINDS)]
            if kind == "vault":
                targets.append(
                    TargetPlan(
                        kind,
                        (
                            f'{{type: vault, url: "{self.vault_proxy.url}", mount: secret, '
                            f"path: chaos/{name}, field: api_key}}"
                        ),
                        f"chaos/{name}",
                        "api_key",
                    )
                )
            elif kind == "aws":
                field_name = "ADJUDON_API_KEY" if i % 2 == 0 else None
                extra = f", field: {field_name}" if field_name else ""
                targets.append(
                    TargetPlan(
                        kind,
                        (
                            f"{{type: aws, secret_id: chaos/{name}, region: us-east-1, "
                            f'endpoint_url: "{self.aws_proxy.url}"{extra}}}'
                        ),
                        f"chaos/{name}",
                        field_name,
                    )
                )
            else:
                fmt, field_name, suffix = FILE_FORMATS[i % len(FILE_FORMATS)]
                extra = f", format: {fmt}" + (f", field: {field_name}" if field_name else "")
                path = f"secrets/{name}{suffix}"
                targets.append(TargetPlan(kind, f"{{type: file, path: {path}{extra}}}", path, field_name))
        if readonce:
            return self._readonce_plan(KeyPlan(name, f"chaos-{name}", tuple(targets)), i)
        return KeyPlan(name, f"chaos-{name}", tuple(targets))

    def _readonce_plan(self, plan: KeyPlan, i: int) -> KeyPlan:
        """``plan`` with a service reading ``secrets/<name>.service.env`` once at start, the
        ``command`` consumer that restarts it, and a GitHub secret as a write-only target."""
        assert self.github is not None
        low, high = self.service_interval
        service = ReadOnceService(
            plan.name,
            self.workdir / "secrets" / f"{plan.name}.service.env",
            SERVICE_VAR,
            self.emulator.url,
            self.workdir / "services" / plan.name,
            interval=round(low + (high - low) * ((i * 7 + self.seed) % 10) / 9, 3),
        )
        self.services[plan.name] = service
        repo = f"chaos/{plan.name}"
        self.github.add_repo(repo)
        extra = (
            f"{{type: file, path: secrets/{plan.name}.service.env, format: dotenv, field: {SERVICE_VAR}}}",
            f'{{type: github, repository: {repo}, secret_name: {SERVICE_VAR}, api_url: "{self.github.url}", '
            f"token: {{env: {GITHUB_ENV}}}}}",
        )
        command = f"{{type: command, argv: {json.dumps(service.restart_argv())}, timeout: 40s}}"
        return KeyPlan(plan.name, plan.agent_id, plan.targets, extra, (command,))

    def write_spec(
        self, *, max_age: str, drain: str, propagation: str, timeout: str, path: Path | None = None
    ) -> Path:
        """Write the rotation file (to ``path``, default :attr:`spec`) and return its path."""
        lines = [
            "version: 1",
            "state_dir: state",
            "defaults:",
            f"  max_age: {max_age}",
            f"  verify: {{drain: {drain}, propagation: {propagation}, timeout: {timeout}}}",
            "issuers:",
            f'  emu: {{type: adjudon, base_url: "{self.emulator.url}", credential: {{env: {ADMIN_ENV}}}, '
            "timeout: 2s}",
            "keys:",
        ]
        for plan in self.plans:
            lines += [
                f"  {plan.name}:",
                "    issuer: emu",
                "    kind: agent",
                f"    agent_id: {plan.agent_id}",
                "    targets:",
            ]
            lines += [f"      - {t.yaml}" for t in plan.targets]
            lines += [f"      - {line}" for line in plan.extra]
            if plan.consumers:
                lines += ["    consumers:"] + [f"      - {line}" for line in plan.consumers]
        out = path or self.spec
        out.write_text("\n".join(lines) + "\n")
        return out

    # ------------------------------------------------------------------ consumers and state

    def reader(self, target: TargetPlan) -> Reader:
        assert self.aws_proxy is not None and self.vault_proxy is not None and self.bao is not None
        if target.kind == "file":
            fmt = "raw" if target.field is None else ("json" if target.where.endswith(".json") else "dotenv")
            return file_reader(self.workdir / target.where, fmt, target.field)
        if target.kind == "aws":
            return aws_reader(self.aws_proxy.url, target.where, target.field)
        return vault_reader(
            self.vault_proxy.url, self.bao.root_token, target.where, target.field or "api_key"
        )

    def start_consumers(self, *, interval: float, reread: float) -> None:
        for plan in self.plans:
            for target in plan.targets:
                consumer = Consumer(
                    f"{plan.name}/{target.kind}",
                    self.reader(target),
                    self.emulator.url,
                    reread=reread,
                    interval=interval,
                )
                self.consumers.append(consumer.start())

    def read_targets(self) -> dict[str, list[tuple[str, TargetState]]]:
        """Every target's state as the rotator's own stores read it (faults off)."""
        import boto3
        import hvac

        assert self.aws_proxy is not None and self.vault_proxy is not None and self.bao is not None
        spec = load_rotation_file(self.spec)
        sm: Any = boto3.client(
            "secretsmanager",
            endpoint_url=self.aws_proxy.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        vault = hvac.Client(url=self.vault_proxy.url, token=self.bao.root_token, timeout=10)
        out: dict[str, list[tuple[str, TargetState]]] = {}
        for name, key in spec.keys.items():
            states = []
            for target in key.targets:
                if getattr(target, "write_only", False):
                    continue  # read back through the fake's private key: :meth:`published`
                if isinstance(target, AwsTarget):
                    from providers.aws import open_store as open_aws

                    store: Any = open_aws(target, base_dir=self.workdir, client=sm)
                elif isinstance(target, VaultTarget):
                    from providers.vault import open_store as open_vault

                    store = open_vault(target, base_dir=self.workdir, client=vault)
                else:
                    store = open_store(target, base_dir=self.workdir)
                states.append((store.name, store.read()))
            out[name] = states
        return out

    def published(self) -> dict[str, str | None]:
        """Each read-once key's GitHub secret, opened with the fake's private key."""
        if self.github is None:
            return {}
        return {name: self.github.secret(f"chaos/{name}", SERVICE_VAR) for name in self.services}

    def rotator(self, *args: str) -> list[str]:
        """The argv of a rotator process on this world's rotation file."""
        return [sys.executable, "-m", "rotator.cli", "-f", str(self.spec), *args]
