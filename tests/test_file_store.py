"""What only the file store promises, beyond the contract suite: modes, atomicity, formats."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from providers.file import FileStore, open_store
from rotator.abc import Stamp
from rotator.errors import (
    StoreAccessDenied,
    StoreConflict,
    StoreError,
    StoreFormatError,
    StoreNotFound,
)
from rotator.secret import Secret
from rotator.spec import FileTarget
from tests.harnesses.file import FileHarness

CANARY = f"cny{uuid.uuid4().hex[:12]}"
ROOT = Path(__file__).resolve().parents[1]


def _store(
    base: Path,
    name: str = "app.env",
    fmt: str = "dotenv",
    field: str | None = "API_KEY",
) -> FileStore:
    (base / "secrets").mkdir(exist_ok=True)
    target = FileTarget.model_validate(
        {"type": "file", "path": f"secrets/{name}", "format": fmt, "field": field}
    )
    return open_store(target, base_dir=base)


def _stamp(value: Secret) -> Stamp:
    return Stamp(key_id="key-1", fingerprint=value.fingerprint, attempt=str(uuid.uuid4()))


def _rotate(store: FileStore, raw: str) -> Stamp:
    value = Secret(raw)
    stamp = _stamp(value)
    store.stage(value, stamp, expected=store.read().revision)
    store.promote(stamp.attempt, datetime.now(UTC))
    return stamp


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """A umask that would leave files group- and world-readable, as on many hosts."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.usefixtures("loose_umask")
def test_every_file_written_is_private(tmp_path: Path) -> None:
    """The consumer file, both sidecars and the lock are created 0600 whatever the umask."""
    store = _store(tmp_path, "app.json", "json", "api_key")
    value = Secret(f"{CANARY}-key")
    stamp = _stamp(value)
    store.stage(value, stamp, expected=None)
    staged = sorted(p.name for p in store.path.parent.iterdir())
    assert staged == ["app.json.rotator-pending", "app.json.rotator.json", "app.json.rotator.lock"]
    assert {_mode(p) for p in store.path.parent.iterdir()} == {0o600}
    store.promote(stamp.attempt, datetime.now(UTC))
    promoted = sorted(p.name for p in store.path.parent.iterdir())
    assert promoted == ["app.json", "app.json.rotator.json", "app.json.rotator.lock"]
    assert {_mode(p) for p in store.path.parent.iterdir()} == {0o600}


def test_consumer_file_keeps_its_mode(tmp_path: Path) -> None:
    """An existing consumer file keeps the mode its operator gave it (e.g. group-readable)."""
    store = _store(tmp_path)
    store.path.write_text("API_KEY=old\n")
    store.path.chmod(0o640)
    _rotate(store, "new")
    assert _mode(store.path) == 0o640
    assert store.path.read_text() == "API_KEY=new\n"


def test_failed_replace_leaves_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash at the rename leaves the old file whole, no temp file behind, the value staged."""
    store = _store(tmp_path, "app.json", "json", "api_key")
    old_text = json.dumps({"api_key": "old", "region": "eu"})
    store.path.write_text(old_text)
    new = Secret(f"{CANARY}-new")
    stamp = _stamp(new)
    store.stage(new, stamp, expected=None)

    def crash(src: object, dst: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(StoreError) as info:
        store.promote(stamp.attempt, datetime.now(UTC))
    assert type(info.value) is StoreError and store.name in str(info.value)
    assert store.path.read_text() == old_text
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    state = store.read()
    assert state.current is not None and state.current.value == Secret("old")
    assert state.pending is not None and state.pending.value == new
    monkeypatch.undo()
    store.promote(stamp.attempt, datetime.now(UTC))
    assert json.loads(store.path.read_text()) == {"api_key": new.reveal(), "region": "eu"}


def test_crash_between_file_and_sidecar_converges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If promote dies after the consumer file is written, the value reads unstamped and a
    second promote finishes the job."""
    store = _store(tmp_path)
    new = Secret("fresh")
    stamp = _stamp(new)
    store.stage(new, stamp, expected=None)
    real_write = FileStore._write

    def die_on_sidecar(self: FileStore, path: Path, data: bytes, **kw: object) -> None:
        if path.name.endswith(".rotator.json"):
            raise OSError(28, "No space left on device")
        real_write(self, path, data, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(FileStore, "_write", die_on_sidecar)
    with pytest.raises(StoreError):
        store.promote(stamp.attempt, datetime.now(UTC))
    monkeypatch.undo()
    state = store.read()
    assert state.current is not None and state.current.value == new
    assert state.current.stamp is None
    assert state.pending is not None and state.pending.stamp == stamp
    store.promote(stamp.attempt, datetime.now(UTC))
    state = store.read()
    assert state.pending is None
    assert state.current is not None and state.current.stamp is not None
    assert state.current.stamp.attempt == stamp.attempt


DOTENV = """\
# payments service
export DB_URL="postgres://app@db/app"   # primary

API_KEY=old_value  # rotated by the rotator
OTHER='lit $x'
"""


@pytest.mark.parametrize(
    ("raw", "written"),
    [
        ("adj_live_0123abcdef", "adj_live_0123abcdef"),
        ("has space#and$dollar", "'has space#and$dollar'"),
        ("it's", '"it\'s"'),
        ("both\"'\\", '"both\\"\'\\\\"'),
    ],
)
def test_dotenv_quotes_only_when_needed(tmp_path: Path, raw: str, written: str) -> None:
    """The field's line is rewritten in place, quoted only when needed; the rest is kept."""
    store = _store(tmp_path)
    store.path.write_text(DOTENV)
    _rotate(store, raw)
    expected = DOTENV.replace("API_KEY=old_value", f"API_KEY={written}")
    assert store.path.read_text() == expected
    current = store.read().current
    assert current is not None and current.value.reveal() == raw


def test_dotenv_appends_a_missing_field(tmp_path: Path) -> None:
    """A dotenv file without the field gets it on a new last line."""
    store = _store(tmp_path)
    store.path.write_text("# no key yet\nOTHER=1")
    _rotate(store, "k1")
    assert store.path.read_text() == "# no key yet\nOTHER=1\nAPI_KEY=k1\n"


def test_dotenv_not_parsable(tmp_path: Path) -> None:
    """A line that is not KEY=value is a StoreFormatError naming the line, not its text."""
    store = _store(tmp_path)
    store.path.write_text(f"API_KEY=ok\n{CANARY} garbage\n")
    calls: list[Callable[[], object]] = [
        store.read,
        lambda: store.stage(Secret("v"), _stamp(Secret("v")), expected=None),
    ]
    for call in calls:
        with pytest.raises(StoreFormatError) as info:
            call()
        assert "line 2" in str(info.value) and store.name in str(info.value)
        assert CANARY not in str(info.value)


def test_json_keeps_other_fields(tmp_path: Path) -> None:
    """Other JSON fields, nested values and their order are kept."""
    store = _store(tmp_path, "app.json", "json", "api_key")
    data = {"zone": "eu", "api_key": "old", "nested": {"a": [1, 2]}, "name": "paiements-é"}
    store.path.write_text(json.dumps(data))
    _rotate(store, "new")
    written = json.loads(store.path.read_text())
    assert written == {**data, "api_key": "new"}
    assert list(written) == list(data)


def test_raw_file_is_the_key_and_a_newline(tmp_path: Path) -> None:
    """A raw file holds the key and a newline; surrounding whitespace is not part of the key."""
    store = _store(tmp_path, "app.key", "raw", None)
    store.path.write_text("  hand-made \n\n")
    current = store.read().current
    assert current is not None and current.value == Secret("hand-made")
    _rotate(store, "rotated")
    assert store.path.read_text() == "rotated\n"


def test_sidecars_hold_no_value(tmp_path: Path) -> None:
    """Only the pending file (until promote) and the consumer file ever hold a value."""
    store = _store(tmp_path)
    value = Secret(f"{CANARY}-value")
    stamp = _stamp(value)
    store.stage(value, stamp, expected=None)
    holders = {p.name for p in tmp_path.rglob("*") if p.is_file() and CANARY in p.read_text()}
    assert holders == {"app.env.rotator-pending"}
    store.promote(stamp.attempt, datetime.now(UTC))
    holders = {p.name for p in tmp_path.rglob("*") if p.is_file() and CANARY in p.read_text()}
    assert holders == {"app.env"}
    sidecar = json.loads(store.path.with_name("app.env.rotator.json").read_text())
    assert sidecar["current"]["stamp"]["rotator-fingerprint"] == value.fingerprint


def test_stamp_follows_the_value_not_the_file(tmp_path: Path) -> None:
    """Editing another line keeps the stamp; replacing the key by hand drops it."""
    store = _store(tmp_path)
    store.path.write_text("A=1\n")
    stamp = _rotate(store, "rotated")
    store.path.write_text(store.path.read_text() + "B=2\n")
    current = store.read().current
    assert current is not None and current.stamp is not None
    assert current.stamp.attempt == stamp.attempt
    store.path.write_text("A=1\nAPI_KEY=by-hand\n")
    current = store.read().current
    assert current is not None and current.value == Secret("by-hand") and current.stamp is None


def test_relative_and_absolute_paths(tmp_path: Path) -> None:
    """A relative path resolves against base_dir; an absolute one ignores it."""
    target = FileTarget(type="file", path="secrets/payments.env", format="dotenv", field="K")
    store = open_store(target, base_dir=tmp_path)
    assert store.path == tmp_path / "secrets/payments.env"
    assert store.name == "file:secrets/payments.env#K"
    absolute = FileTarget(type="file", path=str(tmp_path / "abs.key"))
    assert open_store(absolute, base_dir=tmp_path / "elsewhere").path == tmp_path / "abs.key"


def test_missing_directory(tmp_path: Path) -> None:
    """A missing directory reads as empty; staging there is StoreNotFound naming it."""
    target = FileTarget(type="file", path="nowhere/app.key")
    store = open_store(target, base_dir=tmp_path)
    assert not store.read().exists
    calls: list[Callable[[], object]] = [
        lambda: store.stage(Secret("v"), _stamp(Secret("v")), expected=None),
        store.check_access,
    ]
    for call in calls:
        with pytest.raises(StoreNotFound) as info:
            call()
        assert "nowhere" in str(info.value) and store.name in str(info.value)
    assert not (tmp_path / "nowhere").exists()


def test_damaged_sidecar(tmp_path: Path) -> None:
    """A sidecar that is not the rotator's is a StoreFormatError saying how to recover."""
    store = _store(tmp_path)
    store.path.with_name("app.env.rotator.json").write_text("{not json")
    with pytest.raises(StoreFormatError, match="delete it"):
        store.read()


def test_check_access(tmp_path: Path, file_harness: FileHarness) -> None:
    """check_access passes on a writable directory, leaving no file but the lock, and
    fails with StoreAccessDenied for a user who may not write there."""
    store = file_harness.make_store()
    store.check_access()
    assert [p.name for p in store.path.parent.iterdir()] == ["app.key.rotator.lock"]
    with pytest.raises(StoreAccessDenied):
        file_harness.denied_store(store).check_access()


def test_threads_racing_one_wins(tmp_path: Path) -> None:
    """Two threads staging against the same revision: exactly one wins, every time."""
    for round_ in range(10):
        store = _store(tmp_path, f"race{round_}.env")
        expected = store.read().revision
        barrier = threading.Barrier(2)
        outcomes: dict[str, str] = {}

        def contend(
            tag: str,
            store: FileStore = store,
            expected: str | None = expected,
            barrier: threading.Barrier = barrier,
            outcomes: dict[str, str] = outcomes,
        ) -> None:
            value = Secret(f"value-{tag}")
            barrier.wait()
            try:
                store.stage(value, _stamp(value), expected=expected)
                outcomes[tag] = "won"
            except StoreConflict:
                outcomes[tag] = "conflict"

        threads = [threading.Thread(target=contend, args=(t,)) for t in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes.values()) == ["conflict", "won"]
        winner = next(t for t, o in outcomes.items() if o == "won")
        pending = store.read().pending
        assert pending is not None and pending.value == Secret(f"value-{winner}")


RACER = """
import sys, uuid
from pathlib import Path
from providers.file import open_store
from rotator.abc import Stamp
from rotator.errors import StoreConflict
from rotator.secret import Secret
from rotator.spec import FileTarget
store = open_store(FileTarget(type="file", path="secrets/shared.key"), base_dir=Path(sys.argv[1]))
value = Secret(sys.argv[3])
try:
    store.stage(value, Stamp("k", value.fingerprint, str(uuid.uuid4())), expected=sys.argv[2])
except StoreConflict:
    sys.exit(3)
"""


def test_processes_racing_one_wins(tmp_path: Path) -> None:
    """Two processes staging against the same revision: one wins, the other gets a conflict."""
    store = _store(tmp_path, "shared.key", "raw", None)
    expected = store.read().revision
    assert expected is not None
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    racers = [
        subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), expected, f"v-{n}"], env=env)
        for n in (1, 2)
    ]
    codes = sorted(p.wait(timeout=30) for p in racers)
    assert codes == [0, 3]
    pending = store.read().pending
    assert pending is not None and pending.value in (Secret("v-1"), Secret("v-2"))
