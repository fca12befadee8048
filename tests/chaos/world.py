"""The world a chaos run rotates keys in: the vendor emulator, moto and OpenBao behind fault
proxies, file targets, a rotation file with many agent keys fanned out to 1-3 targets of
different kinds, and one consumer per target."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from providers import open_store
from rotator.abc import TargetState
from rotator.sandbox.emulator import EmulatorServer
from rotator.spec import AwsTarget, VaultTarget, load_rotation_file
from tests.chaos.consumers import Consumer, Reader, aws_reader, file_reader, vault_reader
from tests.chaos.proxy import FaultProxy
from tests.chaos.servers import MotoServer, OpenBao, aws_env

ADMIN_ENV = "CHAOS_ADJUDON_ADMIN_KEY"
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


@dataclass
class World:
    """Every server and file of one run. :meth:`start` brings it up, :meth:`stop` down."""

    workdir: Path
    keys: int
    seed: int
    emulator: EmulatorServer = field(default_factory=EmulatorServer)
    plans: list[KeyPlan] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)
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
        self.plans = [self._plan(i) for i in range(self.keys)]
        return self

    def stop(self) -> None:
        for consumer in self.consumers:
            consumer.stop()
        for part in (self.aws_proxy, self.vault_proxy, self.bao, self.moto, self.emulator):
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
            "ROTATOR_RETRY_INITIAL": "0.05",
            "ROTATOR_RETRY_ATTEMPTS": "4",
            "ROTATOR_RETRY_MAX_TOTAL": "6",
            "ROTATOR_PROBE_TIMEOUT": "6",
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    # ------------------------------------------------------------------ the rotation file

    def _plan(self, i: int) -> KeyPlan:
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
        return KeyPlan(name, f"chaos-{name}", tuple(targets))

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

    def rotator(self, *args: str) -> list[str]:
        """The argv of a rotator process on this world's rotation file."""
        return [sys.executable, "-m", "rotator.cli", "-f", str(self.spec), *args]
