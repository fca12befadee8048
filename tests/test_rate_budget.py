"""One rate budget per vendor: the limiter on a fake clock, the clients that share it, and a
fleet of keys against an emulator that really limits its rate.

The fleet test is the promise of issue 15: a pass over 100+ keys against a vendor limited to
N requests per second ends with every key ok, the vendor's 429s all absorbed (none becomes a
failure), because every worker draws on the same budget.
"""

from __future__ import annotations

import collections
import itertools
import threading
from pathlib import Path

import pytest

from rotator.engine.runner import Engine
from rotator.sandbox.emulator import EmulatorServer
from rotator.secret import Secret
from rotator.spec import Settings, parse_rotation_file
from rotator.vendors import AdjudonIssuer
from rotator.vendors._budget import CUT, FLOOR, PAUSE, WINDOW, RateBudget
from rotator.vendors._http import origin_of, shared_clients
from tests.e2e_helpers import ADMIN_ENV, read_dotenv_key


class FakeClock:
    """Monotonic seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def send(budget: RateBudget, clock: FakeClock) -> tuple[float, int]:
    """Reserve a slot and move the clock to when the request leaves."""
    delay, pace = budget.reserve()
    clock.now += delay
    return delay, pace


# --------------------------------------------------------------------------- the limiter


def test_unpaced_until_the_first_429() -> None:
    clock = FakeClock()
    budget = RateBudget(clock=clock)
    assert [budget.reserve()[0] for _ in range(50)] == [0.0] * 50
    assert budget.rate is None


def test_a_429_pauses_every_worker_for_its_retry_after() -> None:
    clock = FakeClock()
    budget = RateBudget(clock=clock)
    _, pace = budget.reserve()
    budget.limited(pace, retry_after=2.5)
    # the worker that got the 429 waits it out itself: its retry is not paused again
    assert budget.reserve(paused=False)[0] == 0.0
    # every other worker waits the vendor's Retry-After, from the moment of the answer
    clock.now += 1.0
    assert budget.reserve()[0] >= 1.5


def test_a_429_without_retry_after_pauses_one_second() -> None:
    clock = FakeClock()
    budget = RateBudget(clock=clock)
    _, pace = budget.reserve()
    budget.limited(pace, retry_after=None)
    assert budget.reserve()[0] == pytest.approx(PAUSE)


def test_the_cut_is_half_the_recent_send_rate_and_paces_requests() -> None:
    clock = FakeClock()
    budget = RateBudget(clock=clock)
    pace = 0
    for _ in range(40):  # 40 requests over the last second
        _, pace = send(budget, clock)
        clock.now += WINDOW / 40
    clock.now -= WINDOW / 40
    budget.limited(pace, retry_after=0.0)
    assert budget.rate == pytest.approx(40 * CUT)
    # from now on, one request every 1/20 s
    starts = []
    for _ in range(5):
        send(budget, clock)
        starts.append(clock.now)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps == pytest.approx([1 / (40 * CUT)] * 4)


def test_the_pace_never_falls_below_the_floor() -> None:
    clock = FakeClock()
    budget = RateBudget(clock=clock)
    _, pace = send(budget, clock)
    budget.limited(pace, retry_after=0.0)  # one request in the last second: half of 1
    assert budget.rate == FLOOR


def test_one_burst_of_429s_cuts_once() -> None:
    """Requests paced before a cut, or answered before the new pace was tried, do not cut
    again (else one burst of 16 answers would take the pace to the floor)."""
    clock = FakeClock()
    budget = RateBudget(clock=clock)
    paces = [send(budget, clock)[1] for _ in range(16)]
    budget.limited(paces[0], retry_after=0.1)
    rate = budget.rate
    for pace in paces[1:]:
        budget.limited(pace, retry_after=0.1)
    assert budget.rate == rate
    _, fresh = budget.reserve()
    budget.limited(fresh, retry_after=0.1)  # the new pace untried and the cut just made
    assert budget.rate == rate


def test_a_tried_pace_that_still_meets_429_is_cut_again() -> None:
    clock = FakeClock()
    budget = RateBudget(clock=clock)
    for _ in range(20):
        send(budget, clock)
        clock.now += 0.05
    _, pace = budget.reserve()
    budget.limited(pace, retry_after=0.0)
    first = budget.rate
    assert first is not None
    _, pace = send(budget, clock)
    budget.succeeded(pace)  # the new pace was tried
    _, pace = send(budget, clock)
    budget.limited(pace, retry_after=0.0)
    assert budget.rate is not None and budget.rate < first


def test_successes_raise_the_pace() -> None:
    clock = FakeClock()
    budget = RateBudget(clock=clock)
    _, pace = send(budget, clock)
    budget.limited(pace, retry_after=0.0)
    assert budget.rate == FLOOR
    for _ in range(30):
        _, pace = send(budget, clock)
        budget.succeeded(pace)
    assert budget.rate is not None and budget.rate > 5 * FLOOR


def test_concurrent_workers_get_distinct_slots() -> None:
    """Thread-safe: 8 threads reserving at once are spaced 1/rate apart, none twice."""
    clock = FakeClock()
    budget = RateBudget(clock=clock)
    for _ in range(20):
        send(budget, clock)
        clock.now += 0.05
    _, pace = budget.reserve()
    budget.limited(pace, retry_after=0.0)
    assert budget.rate is not None
    delays: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(25):
            delay, _ = budget.reserve()
            with lock:
                delays.append(delay)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ordered = sorted(delays)
    step = 1 / budget.rate
    assert len(set(round(d / step) for d in ordered)) == 200


# --------------------------------------------------------------------------- shared per origin


def test_issuers_of_one_origin_share_one_client_and_budget(emulator: EmulatorServer) -> None:
    """One connection pool and one budget per vendor origin, created on the first request and
    closed with the last issuer; another origin gets its own."""
    admin = Secret(emulator.emulator.bootstrap_workspace_key())
    origin = origin_of(emulator.url)
    assert origin not in shared_clients()
    issuers = [
        AdjudonIssuer("emu", emulator.url, kind="agent", agent_id=f"a{i}", credential=lambda: admin)
        for i in range(5)
    ]
    assert shared_clients()[origin] == 5
    assert len({id(i._http.budget) for i in issuers}) == 1
    clients = {id(i._http._client()) for i in issuers}
    assert len(clients) == 1
    for issuer in issuers:
        assert issuer.list_keys() == []
    with EmulatorServer() as other:
        elsewhere = AdjudonIssuer("other", other.url, kind="workspace", credential=lambda: admin)
        assert elsewhere._http.budget is not issuers[0]._http.budget
        assert id(elsewhere._http._client()) not in clients
        elsewhere.close()
    for issuer in issuers[:-1]:
        issuer.close()
        issuer.close()  # idempotent: one issuer never lets go twice
    assert shared_clients()[origin] == 1
    last = issuers[-1]._http._client()
    issuers[-1].close()
    assert origin not in shared_clients()
    assert last.is_closed
    with pytest.raises(RuntimeError, match="closed"):
        issuers[-1].list_keys()


def test_origin_of() -> None:
    assert origin_of("https://API.example.com/v1") == "https://api.example.com:443"
    assert origin_of("http://127.0.0.1:8080/x") == "http://127.0.0.1:8080"
    assert origin_of("http://[::1]:9/") == "http://[::1]:9"


def test_a_429_through_the_shared_client_waits_retry_after_once(emulator: EmulatorServer) -> None:
    """The worker that got the 429 waits its Retry-After (tenacity) and is then not paused a
    second time by the budget it paused for everyone."""
    admin = Secret(emulator.emulator.bootstrap_workspace_key())
    emulator.emulator.faults.retry_after = 0.25
    emulator.emulator.faults.fail_next = [429]
    sleeps: list[float] = []
    with AdjudonIssuer(
        "emu", emulator.url, kind="workspace", credential=lambda: admin, sleep=sleeps.append
    ) as issuer:
        assert len(issuer.list_keys()) == 1
        assert issuer._http.budget is not None and issuer._http.budget.rate is not None  # now paced
    assert sleeps == [0.25]


# --------------------------------------------------------------------------- a fleet


def fleet_yaml(url: str, n: int) -> str:
    keys = "".join(
        f"  svc-{i:03d}:\n    issuer: emu\n    kind: agent\n    agent_id: svc-{i:03d}\n"
        f"    targets: [{{type: file, path: secrets/svc-{i:03d}.env, format: dotenv, field: ADJUDON_API_KEY}}]\n"
        for i in range(n)
    )
    return (
        "version: 1\nstate_dir: state\ndefaults:\n  verify: {drain: 1s, propagation: 0s}\n"
        f"issuers:\n  emu: {{type: adjudon, base_url: '{url}', credential: {{env: {ADMIN_ENV}}}}}\n"
        f"keys:\n{keys}"
    )


@pytest.mark.slow
def test_a_fleet_against_a_rate_limited_vendor_ends_ok(
    tmp_path: Path, emulator: EmulatorServer, admin: str
) -> None:
    """120 keys, 16 workers, a vendor serving 60 requests/s in bursts of at most 3: the vendor
    answers 429s (the workers together are faster than its limit) and every one is absorbed:
    each key ends ok, with no retry policy loosened for the test."""
    n, limit = 120, 60.0
    (tmp_path / "secrets").mkdir()
    spec = parse_rotation_file(fleet_yaml(emulator.url, n))
    emulator.emulator.faults.rate_limit = limit
    emulator.emulator.faults.rate_burst = 3  # small bursts: met even when the machine is busy
    with Engine(spec, base_dir=tmp_path, settings=Settings()) as engine:
        results = engine.apply(list(spec.keys), parallel=16)
    outcomes = collections.Counter(r.outcome for r in results)
    assert outcomes == {"ok": n}, [r for r in results if r.outcome != "ok"][:3]
    statuses = collections.Counter(status for _, _, status in emulator.emulator.request_log())
    assert emulator.emulator.faults.limited == statuses[429] > 0  # the limit was met, and absorbed
    for name in spec.keys:  # each key holds a key the vendor accepts
        value = read_dotenv_key(tmp_path / "secrets" / f"{name}.env")
        assert value is not None and emulator.emulator.key_accepted(value)
    assert origin_of(emulator.url) not in shared_clients()  # closed with the engine
