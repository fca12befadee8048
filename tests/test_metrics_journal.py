"""Metrics of a pass over many keys read the audit journal once, not once per key."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

import pytest

import rotator.audit
from rotator.engine.runner import Engine
from rotator.metrics import Metrics
from rotator.sandbox.emulator import EmulatorServer
from rotator.spec import Settings, load_rotation_file
from tests.e2e_helpers import ADMIN_ENV, write_spec

FAST = Settings(retry_initial=0.01, retry_attempts=2, probe_timeout=5)
EXTRA = [f"svc{i}" for i in range(7)]


def _key(name: str) -> str:
    return f"""\
  {name}:
    issuer: emu
    kind: agent
    agent_id: {name}
    targets:
      - {{type: file, path: secrets/{name}.env, format: dotenv, field: ADJUDON_API_KEY}}
"""


def test_a_pass_over_eight_keys_opens_the_journal_once(
    tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ADMIN_ENV, emulator.emulator.bootstrap_workspace_key())
    path = write_spec(tmp_path, emulator, targets=1, extra="".join(_key(n) for n in EXTRA))
    engine = Engine(load_rotation_file(path), base_dir=tmp_path, settings=FAST)
    try:
        results = engine.apply(list(engine.spec.keys))
        assert len(results) == 8 and all(r.outcome == "ok" and "mint" in r.steps for r in results)
        opened: list[str] = []

        def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
            opened.append(str(file))
            return builtins.open(file, *args, **kwargs)

        monkeypatch.setattr(rotator.audit, "open", counting_open, raising=False)
        metrics = Metrics()
        metrics.observe_results(engine, results)
        assert opened.count(str(engine.journal.path)) == 1
        text = metrics.exposition().decode()
        for name in ["payments", *EXTRA]:  # every key still got its journal-derived values
            assert f'rotator_key_age_seconds{{key="{name}"}}' in text
            assert f'rotator_rotations_total{{key="{name}",result="ok"}} 1.0' in text
    finally:
        engine.close()
