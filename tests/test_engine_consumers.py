"""The engine rolls consumers and writes write-only targets: the sandbox vendor over loopback,
file targets, and in-process doubles (``tests/doubles.py``) for the consumers and write-only
targets, all on one fake clock so hours of verify policy pass in milliseconds."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rotator.abc import parse_time
from rotator.emergency import run_emergency
from rotator.engine.model import Decision, Revoke
from rotator.engine.runner import Engine
from rotator.errors import Held
from rotator.report import build
from rotator.sandbox.emulator import Emulator, EmulatorServer
from rotator.spec import Settings, load_rotation_file
from tests.doubles import ALWAYS, Doubles
from tests.e2e_helpers import (
    ADMIN_ENV,
    APP_TARGETS,
    FakeClock,
    adjutor_app_yaml,
    agent_keys,
    journal,
    read_dotenv_key,
    rotation_yaml,
    write_rotation_file,
)
from tests.harnesses.consumer_ecs import CLUSTER as ECS_CLUSTER
from tests.harnesses.consumer_ecs import EcsHarness
from tests.harnesses.write_only_lambda_env import OTHERS as LAMBDA_OTHERS
from tests.harnesses.write_only_lambda_env import LambdaEnvHarness

FAST = Settings(retry_initial=0.01, probe_timeout=5, roll_retry=30)
CONSUMERS = ("{type: command, argv: [restart, api]}", "{type: command, argv: [restart, worker]}")
C1, C2 = "command:restart api", "command:restart worker"
GH = "github:acme/pay#ADJUDON_API_KEY"
TARGETS = (
    "{type: file, path: secrets/a.env, format: dotenv, field: ADJUDON_API_KEY}",
    "{type: github, repository: acme/pay, secret_name: ADJUDON_API_KEY}",
    "{type: file, path: secrets/b.key}",
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def vendor(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorServer]:
    """The emulator on the engine's fake clock, with a workspace admin key."""
    with EmulatorServer(Emulator(clock=clock)) as server:
        monkeypatch.setenv(ADMIN_ENV, server.emulator.bootstrap_workspace_key())
        yield server


def _spec(
    tmp: Path, server: EmulatorServer, *, timeout: str = "2h", consumers: tuple[str, ...] = CONSUMERS
) -> Path:
    fields: dict[str, Any] = {"issuer": "emu", "kind": "agent", "agent_id": "payments", "targets": TARGETS}
    if consumers:
        fields["consumers"] = consumers
    text = rotation_yaml(
        defaults={"verify": f"{{drain: 15m, propagation: 2m, timeout: {timeout}}}"},
        issuers={"emu": {"type": "adjudon", "base_url": server.url, "credential": f"{{env: {ADMIN_ENV}}}"}},
        keys={"payments": fields},
    )
    return write_rotation_file(tmp, text)


def _engine(path: Path, clock: FakeClock, doubles: Doubles, settings: Settings = FAST) -> Engine:
    return Engine(
        load_rotation_file(path),
        base_dir=path.parent,
        settings=settings,
        clock=clock,
        sleep=clock.sleep,
        **doubles.factories(),
    )


def _events(tmp: Path, *names: str) -> list[dict[str, Any]]:
    return [e for e in journal(tmp) if e["event"] in names]


def _status(server: EmulatorServer, key_id: str) -> str:
    return str(next(k for k in agent_keys(server) if k["id"] == key_id)["status"])


def test_rotation_rolls_each_consumer_once_per_attempt_in_order(
    tmp_path: Path, clock: FakeClock, vendor: EmulatorServer
) -> None:
    """First run and a rotation: the write-only target gets each new key once, each consumer is
    rolled once per attempt in file order, after the write, and the old key is revoked
    propagation + drain after the last roll."""
    doubles = Doubles()
    path = _spec(tmp_path, vendor)
    with _engine(path, clock, doubles) as engine:
        first = engine.apply(["payments"])[0]
        assert (first.outcome, first.steps) == ("ok", ["mint", "stage", "promote", "publish", "roll"])
        (old_id,) = (k["id"] for k in agent_keys(vendor, active=True))
        again = engine.apply(["payments"])[0]
        assert (again.outcome, again.steps, again.phase) == ("ok", [], "current")
        rotated = engine.apply(["payments"], force=True, wait=True)[0]
        proof = build(engine, ["payments"]).keys[0].rotations[-1]

    assert rotated.outcome == "ok", rotated.message
    # the compliance report's proof of the rotation names its writes and rolls
    assert [m["event"] for m in proof.entries] == ["promoted", "published", "rolled", "rolled", "revoked"]
    assert rotated.steps == ["mint", "stage", "promote", "publish", "roll", "revoke"]
    assert _status(vendor, old_id) != "active"
    minted = [e["attempt"] for e in _events(tmp_path, "minted")]
    assert len(minted) == 2
    assert [(name, ev.attempt) for name, ev in doubles.log] == [
        (C1, minted[0]),
        (C2, minted[0]),
        (C1, minted[1]),
        (C2, minted[1]),
    ]
    new = read_dotenv_key(tmp_path / "secrets/a.env")
    assert new is not None
    written = doubles.targets[GH]
    assert written.value is not None and written.value.reveal() == new
    assert [s.attempt for s in written.writes] == minted
    last = doubles.log[-1][1]
    assert (last.key, last.phase, last.prefix) == ("payments", "rotation", new[:13])
    assert last.fingerprint == written.value.fingerprint

    # the journal: publish before the rolls, rolls before the revoke, drain counted from the last roll
    order = [e["event"] for e in journal(tmp_path) if e["attempt"] == minted[1] or e["event"] == "revoked"]
    assert order == ["minted", "staged", "staged", "promoted", "published", "rolled", "rolled", "revoked"]
    rolled = _events(tmp_path, "rolled")
    assert [(e["details"]["consumer"], e["attempt"]) for e in rolled] == [
        (C1, minted[0]),
        (C2, minted[0]),
        (C1, minted[1]),
        (C2, minted[1]),
    ]
    last_roll = max(parse_time(e["details"]["rolled_at"]) for e in rolled[2:])
    revoked_at = parse_time(str(next(k for k in agent_keys(vendor) if k["id"] == old_id)["revoked_at"]))
    assert revoked_at >= last_roll + timedelta(minutes=17)
    for e in _events(tmp_path, "published", "rolled"):
        assert new not in str(e)


def test_failing_consumer_waits_rolling_then_completes(
    tmp_path: Path, clock: FakeClock, vendor: EmulatorServer
) -> None:
    """A consumer failing twice: the pass reports `rolling` twice (waiting, not failed), the
    other consumer is rolled once, the old key lives until the third try succeeds and is
    revoked only after."""
    doubles = Doubles()
    path = _spec(tmp_path, vendor)
    with _engine(path, clock, doubles) as engine:
        engine.apply(["payments"])
        (old_id,) = (k["id"] for k in agent_keys(vendor, active=True))
        flaky = doubles.consumer(C1)
        flaky.fail = 2
        old_alive: list[str] = []
        flaky.on_roll = lambda event: old_alive.append(_status(vendor, old_id))

        once = engine.apply(["payments"], force=True)[0]
        assert (once.outcome, once.phase) == ("waiting", "rolling"), once.message
        assert f"{C1}: exit status 1" in once.message and "trying again at" in once.message
        assert once.until is not None and once.until - clock.now <= timedelta(seconds=30)
        assert once.steps == ["mint", "stage", "promote", "publish", "roll"]
        assert _status(vendor, old_id) == "active"
        assert not _events(tmp_path, "failed", "held")

        seen: list[Decision] = []
        done = engine.apply(["payments"], wait=True, progress=lambda k, d: seen.append(d))[0]

    assert done.outcome == "ok", done.message
    assert done.steps == ["roll", "roll", "revoke"]
    rolling = [d for d in seen if d.phase == "rolling" and d.action == "wait"]
    assert len(rolling) == 1  # the first failure was the previous pass's
    assert old_alive == ["active"]
    failed = _events(tmp_path, "roll-failed")
    assert [e["details"]["consumer"] for e in failed] == [C1, C1]
    attempt = failed[0]["attempt"]
    assert [n for n, ev in doubles.log if ev.attempt == attempt] == [
        C2,
        C1,
    ]  # C2 rolled once, at the first try
    assert flaky.calls == 4  # first run + three tries
    assert _status(vendor, old_id) != "active"


def test_failing_consumer_holds_at_timeout_with_the_old_key_alive(
    tmp_path: Path, clock: FakeClock, vendor: EmulatorServer
) -> None:
    """A consumer that never rolls: `--wait` retries it until verify.timeout, then holds
    naming it and its error; the old key stays active and nothing is revoked."""
    doubles = Doubles()
    path = _spec(tmp_path, vendor, timeout="20m")
    with _engine(path, clock, doubles) as engine:
        engine.apply(["payments"])
        (old_id,) = (k["id"] for k in agent_keys(vendor, active=True))
        doubles.consumer(C2).fail, doubles.consumer(C2).error = ALWAYS, "deployment not found"
        result = engine.apply(["payments"], force=True, wait=True)[0]
    assert (result.outcome, result.phase) == ("held", "held"), result.message
    assert f"{C2}: deployment not found" in result.message and "stays active" in result.message
    assert C1 not in result.message
    assert _status(vendor, old_id) == "active"
    assert len(agent_keys(vendor, active=True)) == 2
    assert not _events(tmp_path, "revoked")
    assert 30 <= len(_events(tmp_path, "roll-failed")) <= 42  # one try every 30 s for 20 m
    assert sum(1 for name, _ in doubles.log if name == C1) == 2  # once per attempt


def test_write_only_target_down_keeps_consumers_waiting(
    tmp_path: Path, clock: FakeClock, vendor: EmulatorServer
) -> None:
    """A write-only target that cannot be written fails the pass before any consumer rolls;
    the next pass writes it and rolls them."""
    doubles = Doubles()
    path = _spec(tmp_path, vendor)
    with _engine(path, clock, doubles) as engine:
        engine.apply(["payments"])
        before = len(doubles.log)
        doubles.target(GH).fail = ALWAYS
        failed = engine.apply(["payments"], force=True)[0]
        assert failed.outcome == "failed" and GH in failed.message
        assert failed.steps == ["mint", "stage", "promote"]
        assert len(doubles.log) == before
        doubles.target(GH).fail = 0
        done = engine.apply(["payments"], wait=True)[0]
    assert done.outcome == "ok", done.message
    assert done.steps == ["publish", "roll", "revoke"]
    assert len(doubles.log) == before + 2


def test_mint_refused_while_a_write_only_target_is_denied(
    tmp_path: Path, clock: FakeClock, vendor: EmulatorServer
) -> None:
    """A key is not minted for a write-only target the rotator may not write."""
    doubles = Doubles()
    path = _spec(tmp_path, vendor)
    doubles.target(GH).denied = True
    with _engine(path, clock, doubles) as engine:
        result = engine.apply(["payments"])[0]
    assert result.outcome == "failed" and f"{GH}: the token may not write it" in result.message
    assert agent_keys(vendor) == []


def test_revoke_checks_the_journal_for_write_only_targets(
    tmp_path: Path, clock: FakeClock, vendor: EmulatorServer
) -> None:
    """The revoke's pre-check: a write-only target the journal does not show holding the new
    key stops the revoke (it cannot be read back)."""
    doubles = Doubles()
    path = _spec(tmp_path, vendor, consumers=())
    with _engine(path, clock, doubles) as engine:
        engine.apply(["payments"])
        (old_id,) = (k["id"] for k in agent_keys(vendor, active=True))
        # rotate up to the drain, but with a spec whose write-only target was never published
        engine.apply(["payments"], force=True)
        obs = engine.observe("payments")
        promoted_at = min(
            t.state.current.stamp.promoted_at
            for t in obs.targets
            if t.state and t.state.current and t.state.current.stamp and t.state.current.stamp.promoted_at
        )
    other = _spec(tmp_path, vendor, consumers=())
    text = other.read_text().replace("repository: acme/pay", "repository: acme/other")
    other.write_text(text)
    with (
        _engine(other, clock, Doubles()) as engine,
        pytest.raises(Held, match="github:acme/other#ADJUDON_API_KEY"),
    ):
        engine.act("payments", Revoke("drained", old_id, promoted_at))
    assert _status(vendor, old_id) == "active"


def test_consumer_must_carry_its_label(tmp_path: Path, clock: FakeClock, vendor: EmulatorServer) -> None:
    """A plugin whose consumer is named otherwise than its declaration is refused before it
    is rolled: its rolls would never be found in the journal."""
    doubles = Doubles()
    path = _spec(tmp_path, vendor)

    def renamed(model: Any, *, key: str, base_dir: Path) -> Any:
        return doubles.consumer(model.label() + "-x")

    engine = Engine(
        load_rotation_file(path),
        base_dir=tmp_path,
        settings=FAST,
        clock=clock,
        write_only_factory=doubles.write_only_factory,
        consumer_factory=renamed,
    )
    with engine:
        result = engine.apply(["payments"])[0]
    assert result.outcome == "failed"
    assert "its plugin names it 'command:restart api-x'" in result.message
    assert doubles.log == []


def test_stop_during_a_roll_rolls_no_further_consumer(
    tmp_path: Path, clock: FakeClock, vendor: EmulatorServer
) -> None:
    """SIGTERM while a consumer rolls: its wait ends, the next consumer is not started, the
    pass ends waiting; the next pass rolls both."""
    doubles = Doubles()
    path = _spec(tmp_path, vendor)
    with _engine(path, clock, doubles) as engine:
        engine.apply(["payments"])
        slow = doubles.consumer(C1)
        slow.delay = 60.0
        threading.Timer(0.3, engine.stopping.set).start()
        stopped = engine.apply(["payments"], force=True)[0]
        assert stopped.outcome == "waiting", stopped.message
        assert [n for n, _ in doubles.log] == [C1, C2]  # the first run's only
        engine.stopping.clear()
        slow.delay = 0.0
        done = engine.apply(["payments"], wait=True)[0]
    assert done.outcome == "ok", done.message
    assert [n for n, _ in doubles.log] == [C1, C2, C1, C2]


# --------------------------------------------------------------------------- cutover


@pytest.fixture
def adjutor(clock: FakeClock) -> Iterator[EmulatorServer]:
    with EmulatorServer(Emulator(clock=clock)) as server:
        yield server


def _app(tmp: Path, server: EmulatorServer) -> tuple[str, Path]:
    raw = server.emulator.create_app("app_9")
    (tmp / "secrets").mkdir(exist_ok=True)
    (tmp / "secrets/app.key").write_text(raw + "\n")
    text = adjutor_app_yaml(
        server.url,
        "app_9",
        [*APP_TARGETS, "{type: lambda_env, function: pay, variable: ADJUTOR_KEY, region: eu-west-1}"],
    ).replace("    targets:", "    consumers:\n      - " + "\n      - ".join(CONSUMERS) + "\n    targets:")
    return raw, write_rotation_file(tmp, text)


FN = "lambda_env:pay#ADJUTOR_KEY"


def test_cutover_rolls_consumers_in_the_reset_pass(
    tmp_path: Path, clock: FakeClock, adjutor: EmulatorServer
) -> None:
    """A reset vendor: the adopted key rolls nothing; a reset writes the readable targets and
    the write-only one at once, then rolls every consumer in the same pass."""
    doubles = Doubles()
    raw, path = _app(tmp_path, adjutor)
    with _engine(path, clock, doubles) as engine:
        adopted = engine.apply(["app"])[0]
        assert adopted.outcome == "ok", adopted.message
        assert "roll" not in adopted.steps and doubles.log == []
        assert doubles.target(FN).value is not None and doubles.target(FN).value.reveal() == raw
        reset = engine.reconcile("app", force=True)
    assert reset.outcome == "ok", reset.message
    assert reset.steps == ["reset", "roll"]
    new = (tmp_path / "secrets/app.key").read_text().strip()
    assert new != raw and adjutor.emulator.key_accepted(new)
    assert doubles.target(FN).value is not None and doubles.target(FN).value.reveal() == new
    attempt = _events(tmp_path, "reset")[0]["attempt"]
    assert [(n, e.attempt, e.phase) for n, e in doubles.log] == [
        (C1, attempt, "reset"),
        (C2, attempt, "reset"),
    ]
    events = [e["event"] for e in journal(tmp_path) if e["attempt"] == attempt]
    assert events == ["reset-started", "reset", "published", "verified", "rolled", "rolled"]


def test_emergency_on_a_reset_vendor_rolls_consumers_at_once(
    tmp_path: Path, clock: FakeClock, adjutor: EmulatorServer
) -> None:
    """`rotator emergency` on the sandbox's reset vendor: the consumers are rolled in the
    same run, told it is an emergency."""
    doubles = Doubles()
    raw, path = _app(tmp_path, adjutor)
    with _engine(path, clock, doubles) as engine:
        engine.apply(["app"])
        report = run_emergency(engine, "app", reason="leaked in a CI log")
    assert report.outcome == "ok", report.message
    assert not adjutor.emulator.key_accepted(raw)
    assert [(n, e.phase) for n, e in doubles.log] == [(C1, "emergency"), (C2, "emergency")]
    assert doubles.log[0][1].key_id == report.new_key_id
    # the outage: from the reset (the old key died) to the last consumer rolled
    assert report.consumers_rolled == [C1, C2]
    assert report.outage_s is not None and 0 < report.outage_s < 10


def test_emergency_revoke_first_rolls_consumers(
    tmp_path: Path, clock: FakeClock, vendor: EmulatorServer
) -> None:
    """Overlap emergency: the leaked key is revoked first, then the new key is minted, stored,
    published and its consumers rolled in the same run (no old key to wait for)."""
    doubles = Doubles()
    path = _spec(tmp_path, vendor)
    with _engine(path, clock, doubles) as engine:
        engine.apply(["payments"])
        report = run_emergency(engine, "payments", reason="pasted in a chat")
    assert report.outcome == "ok", report.message
    assert [n for n, _ in doubles.log] == [C1, C2, C1, C2]
    assert [e.phase for _, e in doubles.log[2:]] == ["emergency", "emergency"]
    assert doubles.log[-1][1].key_id == report.new_key_id
    assert report.consumers_rolled == [C1, C2]
    assert report.outage_s is not None and 0 < report.outage_s < 10


def test_emergency_keep_serving_rolls_consumers_before_the_revoke(
    tmp_path: Path, clock: FakeClock, vendor: EmulatorServer
) -> None:
    """`--keep-serving`: the consumers are rolled to the new key before the leaked one is
    revoked, so the report's outage is 0."""
    doubles = Doubles()
    path = _spec(tmp_path, vendor)
    with _engine(path, clock, doubles) as engine:
        engine.apply(["payments"])
        (leaked,) = (k["id"] for k in agent_keys(vendor, active=True))
        states: list[str] = []
        doubles.consumer(C2).on_roll = lambda event: states.append(_status(vendor, leaked))
        report = run_emergency(engine, "payments", reason="leaked", keep_serving=True)
    assert report.outcome == "ok", report.message
    assert states == ["active"]  # the emergency's roll came before the revoke
    assert _status(vendor, leaked) != "active"
    assert report.consumers_rolled == [C1, C2] and report.outage_s == 0.0


def test_without_consumers_or_write_only_targets_nothing_changes(
    tmp_path: Path, clock: FakeClock, vendor: EmulatorServer
) -> None:
    """A key without consumers and write-only targets rotates exactly as before."""
    doubles = Doubles()
    text = _spec(tmp_path, vendor, consumers=()).read_text().replace(f"      - {TARGETS[1]}\n", "")
    path = write_rotation_file(tmp_path, text)
    with _engine(path, clock, doubles) as engine:
        engine.apply(["payments"])
        result = engine.apply(["payments"], force=True, wait=True)[0]
    assert (result.outcome, result.steps) == ("ok", ["mint", "stage", "promote", "revoke"])
    assert doubles.log == [] and doubles.targets == {} and doubles.consumers == {}
    assert not _events(tmp_path, "published", "rolled", "roll-failed")


def test_a_key_made_by_hand_later_does_not_hide_the_rolls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal is read from the creation of the key the targets hold, not of the newest
    key: a key a person makes hours after a rotation is held for them, and the consumers
    already rolled are not rolled again."""
    clock = FakeClock(datetime.now(UTC))  # the journal's own times are real ones
    with EmulatorServer(Emulator(clock=clock)) as server:
        monkeypatch.setenv(ADMIN_ENV, server.emulator.bootstrap_workspace_key())
        doubles = Doubles()
        path = _spec(tmp_path, server, timeout="24h")
        with _engine(path, clock, doubles) as engine:
            engine.apply(["payments"])
            assert engine.apply(["payments"], force=True, wait=True)[0].outcome == "ok"
            rolls = len(doubles.log)
            clock.sleep(3 * 3600)
            server.emulator.create_agent_key("payments", "made by hand")
            result = engine.apply(["payments"])[0]
    assert (result.outcome, result.steps) == ("held", []), result.message
    assert "not minted by the rotator" in result.message
    assert len(doubles.log) == rolls


def test_rotation_through_a_lambda_environment_and_an_ecs_service_on_moto(
    tmp_path: Path,
    clock: FakeClock,
    vendor: EmulatorServer,
    consumer_ecs_harness: EcsHarness,
    write_only_lambda_env_harness: LambdaEnvHarness,
) -> None:
    """The real lambda_env target and ecs consumer (boto3 against moto, the deployment moved to
    COMPLETED as the service would): the function's variable gets each new key, its other
    variables are kept, and the service is redeployed once per attempt."""
    ecs, fn = consumer_ecs_harness, write_only_lambda_env_harness
    service, function = ecs.new_service(), fn.new_function()
    text = rotation_yaml(
        defaults={"verify": "{drain: 15m, propagation: 2m, timeout: 2h}"},
        issuers={"emu": {"type": "adjudon", "base_url": vendor.url, "credential": f"{{env: {ADMIN_ENV}}}"}},
        keys={
            "payments": {
                "issuer": "emu",
                "kind": "agent",
                "agent_id": "payments",
                "targets": [
                    TARGETS[0],
                    f"{{type: lambda_env, function: {function}, variable: ADJUDON_API_KEY, region: us-east-1}}",
                ],
                "consumers": [
                    f"{{type: ecs, cluster: {ECS_CLUSTER}, service: {service}, region: us-east-1}}"
                ],
            }
        },
    )
    path = write_rotation_file(tmp_path, text)
    engine = Engine(
        load_rotation_file(path),
        base_dir=tmp_path,
        settings=FAST,
        clock=clock,
        sleep=clock.sleep,
        write_only_factory=lambda target, *, base_dir: fn.target(target.function),
        consumer_factory=lambda model, *, key, base_dir: ecs.consumer(model.service),
    )
    with engine:
        first = engine.apply(["payments"])[0]
        assert first.steps == ["mint", "promote", "publish", "roll"], first.message
        rotated = engine.apply(["payments"], force=True, wait=True)[0]
    assert (rotated.outcome, rotated.steps) == ("ok", ["mint", "promote", "publish", "roll", "revoke"])
    new = read_dotenv_key(tmp_path / "secrets/a.env")
    variables = fn.variables(function)
    assert variables.pop("ADJUDON_API_KEY") == new
    assert variables == LAMBDA_OTHERS
    minted = [e["attempt"] for e in _events(tmp_path, "minted")]
    assert [ev.attempt for ev in ecs.rolls(ecs.consumer(service))] == minted
    assert len(agent_keys(vendor, active=True)) == 1
