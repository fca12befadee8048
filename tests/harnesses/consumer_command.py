"""The command consumer for the consumer contract suite (see tests/consumer_harness.py).

The workload is a real program: a Python script that appends the ``ROTATOR_*`` variables it
was given to a file of its own, one JSON line per run. The failing program prints its whole
environment to stderr before exiting 1, so the suite's canary check sees what a careless
restart script would leak.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import pytest

from providers.consumers.command import CommandRoll
from rotator.abc import Consumer, RollEvent
from rotator.builtin.consumers import CommandConsumer

RECORD = """\
import json, os, sys
with open(sys.argv[1], "a") as out:
    out.write(json.dumps({k: v for k, v in os.environ.items() if k.startswith("ROTATOR_")}) + "\\n")
"""
FAIL = "import os, sys; print(dict(os.environ), file=sys.stderr); sys.exit(1)"
SLEEP = "import time; time.sleep(120)"


class CommandHarness:
    name = "command"

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        (base_dir / "record.py").write_text(RECORD)
        self._declared: dict[Consumer, CommandConsumer] = {}  # by object: long labels are cut
        self._records: dict[Consumer, Path] = {}

    def _build(self, argv: list[str], *, timeout_s: float = 30.0) -> CommandRoll:
        spec = CommandConsumer.model_validate({"type": "command", "argv": argv, "timeout": timeout_s})
        consumer = spec.make_consumer(key="contract", base_dir=self.base_dir)
        assert isinstance(consumer, CommandRoll)
        self._declared[consumer] = spec
        return consumer

    def make_consumer(self) -> Consumer:
        record = f"rolls-{uuid.uuid4().hex[:12]}.jsonl"  # relative: the program runs in base_dir
        consumer = self._build([sys.executable, "record.py", record])
        self._records[consumer] = self.base_dir / record
        return consumer

    def declaration(self, consumer: Consumer) -> CommandConsumer:
        return self._declared[consumer]

    def rolls(self, consumer: Consumer) -> list[RollEvent]:
        path = self._records[consumer]
        if not path.exists():
            return []
        events = []
        for line in path.read_text().splitlines():
            env = json.loads(line)
            events.append(
                RollEvent(
                    key=env["ROTATOR_KEY"],
                    attempt=env["ROTATOR_ATTEMPT"],
                    phase=env["ROTATOR_PHASE"],
                    key_id=env["ROTATOR_KEY_ID"],
                    prefix=env["ROTATOR_PREFIX"],
                    fingerprint=env["ROTATOR_FINGERPRINT"],
                )
            )
        return events

    def failing_consumer(self) -> Consumer:
        return self._build([sys.executable, "-c", FAIL, uuid.uuid4().hex[:8]])

    def stuck_consumer(self, timeout_s: float) -> Consumer:
        return self._build([sys.executable, "-c", SLEEP, uuid.uuid4().hex[:8]], timeout_s=timeout_s)


@pytest.fixture
def consumer_command_harness(tmp_path: Path) -> CommandHarness:
    """Real programs run by the command consumer in a fresh directory."""
    return CommandHarness(tmp_path)
