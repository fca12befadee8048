"""In-process consumers and write-only targets for engine tests, as ``providers/memory.py`` is
for stores: real objects behind the :class:`~rotator.abc.Consumer` and
:class:`~rotator.abc.WriteOnlyTarget` Protocols, with nothing else in the way.

:class:`Doubles` hands them to an :class:`~rotator.engine.runner.Engine` through its
``consumer_factory`` and ``write_only_factory``: a rotation file declares ordinary consumers
(``{type: command, argv: [...]}``) and write-only targets (``github``, ``lambda_env``), and the
engine gets a double for each, named as the real one would be. :class:`MemoryConsumer` records
its rolls and can be told to fail or to be slow; :class:`MemoryWriteOnly` records its writes.

For a crash test the doubles must outlive a process killed by SIGKILL: ``python -m
tests.doubles DIR KEY [--force]`` runs one ``--wait`` pass over ``DIR/rotations.yaml`` with
:class:`FileConsumer` and :class:`FileWriteOnly`, which append each roll and write to
``DIR/record.jsonl``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rotator.abc import Consumer, RollEvent, Stamp, WriteOnlyTarget
from rotator.builtin.stores import GithubTarget, LambdaEnvTarget
from rotator.errors import ConsumerError, StoreAccessDenied, StoreNotFound, StoreUnavailable
from rotator.secret import Secret
from rotator.spec import ConsumerModel, TargetModel

ALWAYS = 1 << 30
"""``fail=ALWAYS``: a consumer or target that never succeeds."""
DIE_IN_ROLL = "TEST_DIE_IN_ROLL"
"""Names a :class:`FileConsumer` that kills its process right after its roll, before the
engine journals it: the one instant a consumer is rolled twice for one attempt."""


def write_only_name(target: TargetModel) -> str:
    """The name the real write-only target of this declaration carries."""
    if isinstance(target, GithubTarget):
        env = f"@{target.environment}" if target.environment else ""
        return f"github:{target.repository}{env}#{target.secret_name}"
    if isinstance(target, LambdaEnvTarget):
        return f"lambda_env:{target.function}#{target.variable}"
    raise TypeError(f"{target.type} is not a write-only target")


class MemoryConsumer:
    """A consumer that records each completed roll; ``fail`` rolls fail first (a
    :class:`ConsumerError` saying ``error``), each taking ``delay`` seconds (cut short by
    ``stop``, as a real wait is)."""

    def __init__(
        self,
        name: str,
        log: list[tuple[str, RollEvent]],
        *,
        fail: int = 0,
        error: str = "exit status 1",
        delay: float = 0.0,
    ) -> None:
        self._name = name
        self._log = log
        self.fail, self.error, self.delay = fail, error, delay
        self.calls = 0
        self.rolls: list[RollEvent] = []
        self.on_roll: Callable[[RollEvent], None] | None = None
        """Called after each completed roll (a test watches the world at that instant)."""

    @property
    def name(self) -> str:
        return self._name

    def roll(self, event: RollEvent, *, stop: threading.Event) -> None:
        self.calls += 1
        if self.delay and stop.wait(self.delay):
            raise ConsumerError(self._name, "stopped before the roll finished")
        if self.fail:
            self.fail -= 1
            raise ConsumerError(self._name, self.error)
        self.rolls.append(event)
        self._log.append((self._name, event))
        if self.on_roll is not None:
            self.on_roll(event)


class MemoryWriteOnly:
    """A write-only target that keeps the value written and a stamp per write."""

    def __init__(self, name: str) -> None:
        self._name = name
        self.value: Secret | None = None
        self.writes: list[Stamp] = []
        self.fail = 0
        self.denied = False
        self.missing = False

    @property
    def name(self) -> str:
        return self._name

    def write(self, value: Secret, stamp: Stamp) -> None:
        self.check_access()
        if self.fail:
            self.fail -= 1
            raise StoreUnavailable(self._name, "connection refused")
        self.value = value
        self.writes.append(stamp)

    def check_access(self) -> None:
        if self.missing:
            raise StoreNotFound(self._name, "no such function or repository")
        if self.denied:
            raise StoreAccessDenied(self._name, "the token may not write it")


class Doubles:
    """One double per declared consumer and write-only target, by name, made on first use."""

    def __init__(self) -> None:
        self.consumers: dict[str, MemoryConsumer] = {}
        self.targets: dict[str, MemoryWriteOnly] = {}
        self.log: list[tuple[str, RollEvent]] = []
        """Every completed roll of every consumer, in order: (consumer, event)."""

    def consumer(self, name: str, **kw: Any) -> MemoryConsumer:
        """The double of consumer ``name`` (its label); ``kw`` configure it when first made."""
        if name not in self.consumers:
            self.consumers[name] = MemoryConsumer(name, self.log, **kw)
        return self.consumers[name]

    def target(self, name: str) -> MemoryWriteOnly:
        if name not in self.targets:
            self.targets[name] = MemoryWriteOnly(name)
        return self.targets[name]

    def consumer_factory(self, model: ConsumerModel, *, key: str, base_dir: Path) -> Consumer:
        return self.consumer(model.label())

    def write_only_factory(self, target: TargetModel, *, base_dir: Path) -> WriteOnlyTarget:
        return self.target(write_only_name(target))

    def factories(self) -> dict[str, Any]:
        """The keyword arguments that give an ``Engine`` these doubles."""
        return {"consumer_factory": self.consumer_factory, "write_only_factory": self.write_only_factory}


# --------------------------------------------------------------------------- across processes


class FileConsumer:
    """A consumer whose rolls are appended to a file, so they outlive a killed process."""

    def __init__(self, name: str, record: Path) -> None:
        self._name, self.record = name, record

    @property
    def name(self) -> str:
        return self._name

    def roll(self, event: RollEvent, *, stop: threading.Event) -> None:
        _append(self.record, {"consumer": self._name, "pid": os.getpid(), **event.to_dict()})
        if os.environ.get(DIE_IN_ROLL) == self._name:  # rolled, not yet journalled
            os.kill(os.getpid(), signal.SIGKILL)


class FileWriteOnly:
    """A write-only target whose writes (fingerprint and attempt, never the value) are
    appended to a file."""

    def __init__(self, name: str, record: Path) -> None:
        self._name, self.record = name, record

    @property
    def name(self) -> str:
        return self._name

    def write(self, value: Secret, stamp: Stamp) -> None:
        assert value.fingerprint == stamp.fingerprint
        _append(
            self.record, {"target": self._name, "fingerprint": stamp.fingerprint, "attempt": stamp.attempt}
        )

    def check_access(self) -> None:
        return


def _append(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_record(folder: Path) -> list[dict[str, Any]]:
    path = folder / "record.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def main(argv: list[str]) -> int:
    """One ``--wait`` pass of KEY over DIR/rotations.yaml with file-backed doubles; prints the
    result as JSON; exit 0 when the key is at rest."""
    from rotator.engine.runner import Engine
    from rotator.spec import Settings, load_rotation_file

    folder, key = Path(argv[0]), argv[1]
    record = folder / "record.jsonl"
    spec = load_rotation_file(folder / "rotations.yaml")
    engine = Engine(
        spec,
        base_dir=folder,
        settings=Settings(retry_initial=0.01, probe_timeout=5),
        consumer_factory=lambda model, *, key, base_dir: FileConsumer(model.label(), record),
        write_only_factory=lambda target, *, base_dir: FileWriteOnly(write_only_name(target), record),
    )
    with engine:
        result = engine.reconcile(key, force="--force" in argv, wait=True)
    print(json.dumps(result.as_dict()))
    return 0 if result.outcome == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
