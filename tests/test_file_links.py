"""A file target that is a symbolic link: written through, never replaced by a regular file."""

from __future__ import annotations

import os
import stat
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from providers.file import FileStore, open_store
from rotator.abc import Stamp
from rotator.engine.runner import Engine
from rotator.errors import StoreError, StoreNotFound
from rotator.sandbox.emulator import EmulatorServer
from rotator.secret import Secret
from rotator.spec import FileTarget, Settings, load_rotation_file
from tests.conftest import run_cli
from tests.e2e_helpers import ADMIN_ENV, agent_keys, read_dotenv_key, write_spec

FAST = Settings(retry_initial=0.01, probe_timeout=5)
CANARY = f"cny{uuid.uuid4().hex[:12]}"


def _linked(tmp_path: Path, name: str = "a.env") -> tuple[Path, Path]:
    """``secrets/NAME`` as a relative link to ``elsewhere/app.env`` (not created here)."""
    (tmp_path / "secrets").mkdir(exist_ok=True)
    (tmp_path / "elsewhere").mkdir(exist_ok=True)
    link = tmp_path / "secrets" / name
    link.symlink_to(Path("..") / "elsewhere" / "app.env")
    return link, tmp_path / "elsewhere" / "app.env"


def _store(tmp_path: Path, name: str = "a.env") -> FileStore:
    target = FileTarget(type="file", path=f"secrets/{name}", format="dotenv", field="API_KEY")
    return open_store(target, base_dir=tmp_path)


def test_symlinked_file_target_is_written_through(
    tmp_path: Path, emulator: EmulatorServer, admin: str
) -> None:
    """A full rotation on the emulator through a linked target: the destination holds the new
    key with its mode, owner and other lines kept, and the link is still the same link."""
    path = write_spec(tmp_path, emulator, drain="1s", propagation="0s", targets=1)
    link, dest = _linked(tmp_path)
    dest.write_text("OTHER=1\n")
    dest.chmod(0o640)
    if os.geteuid() == 0:  # only root may give the file away: then the owner must be kept too
        os.chown(dest, 4321, 4321)
    before = dest.stat()
    engine = Engine(load_rotation_file(path), base_dir=tmp_path, settings=FAST)

    first = engine.apply(["payments"])[0]
    assert (first.outcome, first.steps) == ("ok", ["mint", "promote"]), first.message
    old = read_dotenv_key(dest)
    assert old is not None and emulator.emulator.key_accepted(old)
    result = engine.apply(["payments"], force=True, wait=True)[0]
    assert (result.outcome, result.steps) == ("ok", ["mint", "promote", "revoke"]), result.message

    new = read_dotenv_key(dest)
    assert new is not None and new != old
    assert emulator.emulator.key_accepted(new) and not emulator.emulator.key_accepted(old)
    assert link.is_symlink() and os.readlink(link) == os.path.join("..", "elsewhere", "app.env")
    assert dest.read_text() == f"OTHER=1\nADJUDON_API_KEY={new}\n"
    after = dest.stat()
    assert stat.S_IMODE(after.st_mode) == 0o640
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    # the bookkeeping stays next to the link; the destination's folder holds only the file
    assert sorted(p.name for p in dest.parent.iterdir()) == ["app.env"]
    assert sorted(p.name for p in link.parent.iterdir()) == [
        "a.env",
        "a.env.rotator.json",
        "a.env.rotator.lock",
    ]
    current = engine.stores("payments")[0].read().current
    assert current is not None and current.value == Secret(new) and current.stamp is not None


def test_linked_target_stages_beside_the_link(tmp_path: Path) -> None:
    """Stage writes the pending copy next to the link; the destination changes only at promote."""
    link, dest = _linked(tmp_path)
    dest.write_text("API_KEY=old\n")
    store = _store(tmp_path)
    value = Secret(f"{CANARY}-new")
    stamp = Stamp(key_id="k-1", fingerprint=value.fingerprint, attempt=str(uuid.uuid4()))
    store.stage(value, stamp, expected=store.read().revision)
    assert dest.read_text() == "API_KEY=old\n"
    assert CANARY in (tmp_path / "secrets/a.env.rotator-pending").read_text()
    store.check_access()
    store.promote(stamp.attempt, datetime.now(UTC))
    assert link.is_symlink() and dest.read_text() == f"API_KEY={value.reveal()}\n"
    assert not (tmp_path / "secrets/a.env.rotator-pending").exists()


def test_dangling_file_link_is_one_clear_error(tmp_path: Path) -> None:
    """A link to a missing file is StoreNotFound naming the link and where it points, from
    read, stage and check_access alike; nothing is created at the destination."""
    link, dest = _linked(tmp_path)
    store = _store(tmp_path)
    value = Secret(f"{CANARY}-v")
    stamp = Stamp(key_id="k-1", fingerprint=value.fingerprint, attempt=str(uuid.uuid4()))
    for call in (store.read, store.check_access, lambda: store.stage(value, stamp, expected=None)):
        with pytest.raises(StoreNotFound) as info:
            call()
        message = str(info.value)
        assert message.startswith(f"{store.name}: ") and "\n" not in message
        assert "symbolic link" in message and "elsewhere/app.env" in message
        assert "does not exist" in message and CANARY not in message
    assert not dest.exists() and link.is_symlink()
    assert not (tmp_path / "secrets/a.env.rotator-pending").exists()


def test_link_loop_is_one_clear_error(tmp_path: Path) -> None:
    """Two links pointing at each other: a StoreError saying the link cannot be resolved."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets/a.env").symlink_to("b.env")
    (tmp_path / "secrets/b.env").symlink_to("a.env")
    with pytest.raises(StoreError, match="symbolic link that cannot be resolved"):
        _store(tmp_path).read()


def test_dangling_link_apply_fails_before_minting(
    tmp_path: Path, emulator: EmulatorServer, admin: str
) -> None:
    """`rotator apply` on a dangling linked target: exit 1, the key's line names the link, and
    nothing is minted at the vendor."""
    write_spec(tmp_path, emulator, targets=1)
    link, dest = _linked(tmp_path)
    proc = run_cli("apply", cwd=tmp_path, env={ADMIN_ENV: admin})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("payments: failed")
    assert "symbolic link" in lines[0] and "does not exist" in lines[0]
    assert "Traceback" not in proc.stderr
    assert agent_keys(emulator) == []
    assert link.is_symlink() and not dest.exists()
