"""The audit journal: chain, tamper detection, concurrency, refusal of raw keys."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from rotator.audit import GENESIS, Journal, JournalError, entry_hash
from rotator.secret import Secret

ADJ_LIVE = "adj_live_" + "0123456789abcdef" * 4
ADJ_AGENT = "adj_agent_" + "fedcba9876543210" * 3
SK_LIVE = "sk_live_" + "AbCdEfGhIj0123456789" * 2
ATTEMPT = "3f0c2a3e-8d7b-4a8e-9a51-2f4bd3c9e001"


def _journal(tmp_path: Path, n: int = 5) -> Journal:
    journal = Journal(tmp_path / "state")
    for i in range(n):
        journal.append("step", key=f"k{i % 2}", attempt=ATTEMPT, i=i)
    return journal


def _lines(journal: Journal) -> list[str]:
    return journal.path.read_text().splitlines(keepends=True)


def _rewrite(journal: Journal, lines: list[str]) -> None:
    journal.path.write_text("".join(lines))


def _dump(entry: dict[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"


def _rechain(entries: list[dict[str, Any]]) -> list[str]:
    """What a forger who recomputes every hash would write."""
    prev, out = GENESIS, []
    for old in entries:
        entry = {**old, "prev": prev}
        entry["hash"] = prev = entry_hash(entry)
        out.append(_dump(entry))
    return out


def test_entries_chain_to_each_other(tmp_path: Path) -> None:
    """Each entry names the previous one's hash, counts up from 1 and hashes its own content."""
    journal = Journal(tmp_path / "state")
    written = [
        journal.append("mint", key="payments", attempt=ATTEMPT, key_id="k_1", prefix=ADJ_LIVE[:13]),
        journal.append("stage", key="payments", attempt=ATTEMPT, target="aws:prod/payments"),
        journal.append("promote", key="payments", attempt=ATTEMPT),
    ]
    read = list(journal.entries())
    assert read == written
    assert [e["seq"] for e in read] == [1, 2, 3]
    assert read[0]["prev"] == GENESIS
    assert read[1]["prev"] == read[0]["hash"]
    assert read[2]["prev"] == read[1]["hash"]
    assert all(e["hash"] == entry_hash(e) for e in read)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", read[0]["ts"])
    assert read[0]["details"] == {"key_id": "k_1", "prefix": "adj_live_0123"}
    assert journal.verify().ok
    assert journal.verify().checked == 3


def test_missing_journal_is_empty_and_intact(tmp_path: Path) -> None:
    """A journal never written reads as empty and verifies."""
    journal = Journal(tmp_path / "nowhere")
    assert list(journal.entries()) == []
    assert journal.last("payments") is None
    assert journal.verify().ok
    assert journal.verify().checked == 0


def _edit(journal: Journal) -> None:
    lines = _lines(journal)
    entry = json.loads(lines[2])
    entry["details"]["i"] = 99
    lines[2] = _dump(entry)
    _rewrite(journal, lines)


def _edit_and_rehash_one(journal: Journal) -> None:
    lines = _lines(journal)
    entry = json.loads(lines[2])
    entry["event"] = "nothing-happened"
    entry["hash"] = entry_hash(entry)
    lines[2] = _dump(entry)
    _rewrite(journal, lines)


def _delete(journal: Journal) -> None:
    lines = _lines(journal)
    del lines[2]
    _rewrite(journal, lines)


def _delete_first(journal: Journal) -> None:
    _rewrite(journal, _lines(journal)[1:])


def _swap(journal: Journal) -> None:
    lines = _lines(journal)
    lines[1], lines[2] = lines[2], lines[1]
    _rewrite(journal, lines)


def _truncate(journal: Journal) -> None:
    data = journal.path.read_bytes()
    journal.path.write_bytes(data[: len(data) - len(_lines(journal)[-1]) // 2])


def _break_seq(journal: Journal) -> None:
    entries = [json.loads(line) for line in _lines(journal)]
    entries[2]["seq"] = 7
    _rewrite(journal, _rechain(entries))


def _insert_garbage(journal: Journal) -> None:
    lines = _lines(journal)
    lines.insert(3, "not json at all\n")
    _rewrite(journal, lines)


def _add_field(journal: Journal) -> None:
    lines = _lines(journal)
    entry = json.loads(lines[1])
    entry["note"] = "added later"
    lines[1] = _dump(entry)
    _rewrite(journal, lines)


@pytest.mark.parametrize(
    ("tamper", "line", "reason"),
    [
        (_edit, 3, "altered"),
        (_edit_and_rehash_one, 4, "does not follow line 3"),
        (_delete, 3, "does not follow line 2"),
        (_delete_first, 1, "does not follow"),
        (_swap, 2, "does not follow line 1"),
        (_truncate, 5, "truncated"),
        (_break_seq, 3, "has seq 7, expected 3"),
        (_insert_garbage, 4, "not valid JSON"),
        (_add_field, 2, "unexpected ['note']"),
    ],
    ids=[
        "edited",
        "edited-rehashed",
        "deleted",
        "deleted-first",
        "reordered",
        "truncated",
        "seq",
        "garbage",
        "extra-field",
    ],
)
def test_verify_names_the_first_tampered_line(
    tmp_path: Path, tamper: Callable[[Journal], None], line: int, reason: str
) -> None:
    """Every kind of tampering is caught at the line where the chain first breaks."""
    journal = _journal(tmp_path)
    assert journal.verify().ok
    tamper(journal)
    result = journal.verify()
    assert not result.ok
    assert result.first_bad == line
    assert result.checked == line - 1
    assert result.reason is not None
    assert reason in result.reason


def test_append_refuses_to_continue_a_cut_journal(tmp_path: Path) -> None:
    """After a torn last line appends fail loudly, while readers skip the torn line."""
    journal = _journal(tmp_path)
    last_k0 = journal.last("k0")
    _truncate(journal)
    size = journal.path.stat().st_size
    with pytest.raises(JournalError, match="cut short"):
        journal.append("step", key="k0")
    assert journal.path.stat().st_size == size
    assert [e["seq"] for e in journal.entries()] == [1, 2, 3, 4]
    assert journal.last("k0") != last_k0  # entry 5 (k0) is torn, so entry 3 is the latest
    assert journal.last("k0") == next(e for e in journal.entries() if e["seq"] == 3)


_WRITER = """
import pathlib, sys, time
from rotator.audit import Journal
state, go, who = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
(go.parent / f"ready-{who}").touch()
while not go.exists():
    time.sleep(0.001)
journal = Journal(state)
for i in range(50):
    journal.append("tick", key=f"k{who}", writer=who, i=i)
"""


def _assert_all_written(journal: Journal, writers: int, per_writer: int) -> None:
    entries = list(journal.entries())
    assert [e["seq"] for e in entries] == list(range(1, writers * per_writer + 1))
    seen = sorted((str(e["details"]["writer"]), int(e["details"]["i"])) for e in entries)
    assert seen == sorted((str(w), i) for w in range(writers) for i in range(per_writer))
    result = journal.verify()
    assert result.ok, result.reason
    assert result.checked == writers * per_writer


@pytest.mark.timeout(60)
def test_concurrent_processes_append_without_loss(tmp_path: Path) -> None:
    """Four processes appending 50 entries each leave 200 entries, seq 1..200, chain intact."""
    state, go = tmp_path / "state", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(state), str(go), str(w)]) for w in range(4)]
    try:
        deadline = time.monotonic() + 30
        while len(list(tmp_path.glob("ready-*"))) < 4:
            assert time.monotonic() < deadline, "writers did not start"
            assert all(p.poll() is None for p in procs), "a writer died before starting"
            time.sleep(0.005)
        go.touch()
        assert [p.wait(timeout=30) for p in procs] == [0, 0, 0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    _assert_all_written(Journal(state), writers=4, per_writer=50)


def test_concurrent_threads_append_without_loss(tmp_path: Path) -> None:
    """Eight threads of one process appending at once lose no entry and keep the chain."""
    journal = Journal(tmp_path / "state")
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def write(who: int) -> None:
        try:
            barrier.wait()
            for i in range(25):
                journal.append("tick", writer=who, i=i)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    _assert_all_written(journal, writers=8, per_writer=25)


@pytest.mark.parametrize(
    "details",
    [
        {"new_key": Secret(ADJ_LIVE)},
        {"keys": [Secret(ADJ_AGENT)]},
        {"minted": {"value": Secret(SK_LIVE)}},
    ],
    ids=["top", "in-list", "in-dict"],
)
def test_secret_details_are_refused(tmp_path: Path, details: dict[str, object]) -> None:
    """A Secret anywhere in the details is a TypeError and nothing is written."""
    journal = _journal(tmp_path, n=1)
    with pytest.raises(TypeError, match="Secret") as caught:
        journal.append("mint", key="payments", **details)
    assert not any(raw in str(caught.value) for raw in (ADJ_LIVE, ADJ_AGENT, SK_LIVE))
    assert len(list(journal.entries())) == 1


@pytest.mark.parametrize("raw", [ADJ_LIVE, ADJ_AGENT, SK_LIVE], ids=["workspace", "agent", "app"])
@pytest.mark.parametrize(
    ("details", "named"),
    [
        (lambda raw: {"new_key": raw}, "'new_key'"),
        (lambda raw: {"error": f"401 for Authorization: Bearer {raw}."}, "'error'"),
        (lambda raw: {"targets": [{"name": "aws", "value": raw}]}, "'targets[0].value'"),
        (lambda raw: {"headers": {raw: "x"}}, "'headers'"),
    ],
    ids=["whole", "embedded", "nested", "as-field-name"],
)
def test_raw_key_strings_are_refused(
    tmp_path: Path, raw: str, details: Callable[[str], dict[str, object]], named: str
) -> None:
    """A string that looks like a vendor key is a ValueError naming the detail, not the value."""
    journal = _journal(tmp_path, n=1)
    with pytest.raises(ValueError, match=re.escape(named)) as caught:
        journal.append("mint", key="payments", **details(raw))
    assert raw not in str(caught.value)
    assert raw[:20] not in str(caught.value)
    assert len(list(journal.entries())) == 1


def test_raw_key_refused_in_key_and_attempt(tmp_path: Path) -> None:
    """The key and attempt fields are screened too."""
    journal = Journal(tmp_path / "state")
    with pytest.raises(ValueError, match="key"):
        journal.append("mint", key=ADJ_LIVE)
    with pytest.raises(ValueError, match="attempt"):
        journal.append("mint", key="payments", attempt=SK_LIVE)
    with pytest.raises(TypeError, match="key"):
        journal.append("mint", key=Secret(ADJ_LIVE))  # type: ignore[arg-type]
    assert not journal.path.exists()


def test_key_names_and_fingerprints_are_accepted(tmp_path: Path) -> None:
    """Prefixes, fingerprints and near-misses of the key formats are not mistaken for keys."""
    journal = Journal(tmp_path / "state")
    entry = journal.append(
        "mint",
        key="payments",
        prefix=ADJ_LIVE[:13],
        fingerprint=Secret(ADJ_LIVE).fingerprint,
        short="adj_live_" + "0" * 63,
        upper="adj_live_" + "A" * 64,
        at=datetime(2024, 5, 1, 3, 0, tzinfo=UTC),
    )
    assert entry["details"]["prefix"] == "adj_live_0123"
    assert entry["details"]["at"] == "2024-05-01T03:00:00.000000Z"
    assert journal.verify().ok


def test_non_json_details_are_refused(tmp_path: Path) -> None:
    """A detail that is not JSON data is a TypeError naming it."""
    journal = Journal(tmp_path / "state")
    with pytest.raises(TypeError, match="'targets'"):
        journal.append("stage", key="payments", targets={"aws", "gcp"})
    assert not journal.path.exists()


def test_files_are_private(tmp_path: Path) -> None:
    """The state directory is created 0700 and the journal 0600, even under umask 0."""
    old = os.umask(0)
    try:
        journal = Journal(tmp_path / "state")
        journal.append("mint", key="payments")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert stat.S_IMODE(journal.path.stat().st_mode) == 0o600


def test_entries_filter_and_last(tmp_path: Path) -> None:
    """entries(key) streams one key's entries; last() finds the latest, also by event."""
    journal = Journal(tmp_path / "state")
    journal.append("mint", key="payments", attempt=ATTEMPT, n=1)
    journal.append("mint", key="billing", n=2)
    journal.append("stage", key="payments", attempt=ATTEMPT, n=3, padding="x" * 20_000)
    journal.append("hold", key="billing", n=4, padding="y" * 20_000)
    assert [e["details"]["n"] for e in journal.entries("payments")] == [1, 3]
    assert [e["details"]["n"] for e in journal.entries()] == [1, 2, 3, 4]
    assert (journal.last("payments") or {})["details"]["n"] == 3
    assert (journal.last("payments", "mint") or {})["details"]["n"] == 1
    assert (journal.last("billing") or {})["event"] == "hold"
    assert journal.last("billing", "revoke") is None
    assert journal.last("nobody") is None


_MEASURE = """
import json, pathlib, resource, sys
from rotator.audit import Journal
journal = Journal(pathlib.Path(sys.argv[1]))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = journal.verify()
latest = journal.last("k3")
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(json.dumps({"ok": result.ok, "checked": result.checked, "seq": latest["seq"],
                  "grown": grown}))
"""


@pytest.mark.timeout(60)
def test_a_large_journal_verifies_streaming(tmp_path: Path) -> None:
    """A 100k-entry journal verifies, and last() answers, without loading the file into memory."""
    journal = Journal(tmp_path / "state")
    journal.state_dir.mkdir()
    prev = GENESIS
    with open(journal.path, "w") as f:
        for seq in range(1, 100_001):
            entry: dict[str, Any] = {
                "seq": seq,
                "ts": "2024-05-01T03:00:00.000000Z",
                "event": "tick",
                "key": f"k{seq % 7}",
                "attempt": None,
                "details": {"n": seq},
                "prev": prev,
            }
            entry["hash"] = prev = entry_hash(entry)
            f.write(_dump(entry))
    size = journal.path.stat().st_size
    # A fresh process, so its peak resident size (ru_maxrss, in KiB on Linux) is verify's own.
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(journal.state_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=50,
    )
    measured = json.loads(out.stdout)
    assert measured["ok"]
    assert measured["checked"] == 100_000
    assert measured["seq"] == max(s for s in range(1, 100_001) if s % 7 == 3)
    assert measured["grown"] < size / 4, f"grew {measured['grown']} bytes for a {size}-byte file"
    journal.append("tick", key="k0")
    assert journal.verify().checked == 100_001
