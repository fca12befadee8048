"""The command consumer beyond the contract: what its program's environment holds, where it
runs, what a failure says, and that a timeout ends the program's whole process group."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from providers.consumers.command import PASSED, CommandRoll
from rotator.abc import RollEvent
from rotator.builtin.consumers import CommandConsumer
from rotator.errors import ConsumerError, ConsumerTimeout

EVENT = RollEvent("payments", "att-1", "emergency", "key-9", "adj_live_1a2b", "3f5c0e9a41d2")
DUMP_ENV = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w'))"


def _consumer(tmp_path: Path, argv: list[str], **fields: object) -> CommandRoll:
    spec = CommandConsumer.model_validate({"type": "command", "argv": argv, **fields})
    consumer = spec.make_consumer(key="payments", base_dir=tmp_path)
    assert isinstance(consumer, CommandRoll)
    return consumer


def test_the_environment_holds_the_event_and_only_the_passed_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ROTATOR_* carry the event; of the rotator's own variables only PASSED and LC_* remain."""
    monkeypatch.setenv("ADJUDON_ADMIN_KEY", "adj_live_" + "a" * 64)
    monkeypatch.setenv("LC_TIME", "C")
    monkeypatch.setenv("KUBECONFIG", "/etc/kube.conf")
    _consumer(tmp_path, [sys.executable, "-c", DUMP_ENV, "env.json"]).roll(EVENT, stop=threading.Event())
    env = json.loads((tmp_path / "env.json").read_text())
    rotator_vars = {k: v for k, v in env.items() if k.startswith("ROTATOR_")}
    assert rotator_vars == {
        "ROTATOR_KEY": "payments",
        "ROTATOR_ATTEMPT": "att-1",
        "ROTATOR_PHASE": "emergency",
        "ROTATOR_KEY_ID": "key-9",
        "ROTATOR_PREFIX": "adj_live_1a2b",
        "ROTATOR_FINGERPRINT": "3f5c0e9a41d2",
    }
    others = set(env) - set(rotator_vars)
    # what the interpreter adds itself on some platforms, never anything of ours
    assert others <= set(PASSED) | {"LC_TIME", "LC_CTYPE", "PWD"}, others - set(PASSED)
    assert env["LC_TIME"] == "C" and env["KUBECONFIG"] == "/etc/kube.conf"
    assert env["PATH"] == os.environ["PATH"]
    assert "ADJUDON_ADMIN_KEY" not in env


def test_a_relative_cwd_is_the_rotation_files_directory(tmp_path: Path) -> None:
    """``cwd`` resolves against the rotation file's directory; argv is not shell-parsed."""
    (tmp_path / "deploy").mkdir()
    argv = [
        sys.executable,
        "-c",
        "import os, sys; open('where', 'w').write(os.getcwd() + sys.argv[1])",
        "$HOME;x",
    ]
    _consumer(tmp_path, argv, cwd="deploy").roll(EVENT, stop=threading.Event())
    assert (tmp_path / "deploy" / "where").read_text() == str(tmp_path / "deploy") + "$HOME;x"


@pytest.mark.parametrize(
    ("argv", "cwd", "expected"),
    [
        (["no-such-program-4f1c"], None, "program 'no-such-program-4f1c' not found"),
        (["./script.sh"], None, "program './script.sh' is not executable"),
        (["true"], "missing", "working directory "),
    ],
)
def test_a_program_that_cannot_start_is_named(
    tmp_path: Path, argv: list[str], cwd: str | None, expected: str
) -> None:
    """Missing program, a file without the execute bit, a missing directory: one clear error."""
    (tmp_path / "script.sh").write_text("#!/bin/sh\nexit 0\n")
    consumer = _consumer(tmp_path, argv, cwd=cwd)
    with pytest.raises(ConsumerError) as caught:
        consumer.roll(EVENT, stop=threading.Event())
    assert str(caught.value).startswith(f"{consumer.name}: {expected}")


def test_a_failure_shows_the_last_stderr_lines_escaped_and_redacted(tmp_path: Path) -> None:
    """Exit status, the last lines of stderr (bounded), control characters escaped, key-shaped
    text masked: the program is the user's and may echo anything."""
    key = "adj_live_" + "b" * 64
    script = (
        "import sys\n"
        "for i in range(200): print('noise', i, file=sys.stderr)\n"
        f"print('using {key}', file=sys.stderr)\n"
        "print('bell\\x07 and \\x1b[31mred', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    (tmp_path / "noisy.py").write_text(script)  # argv is one line each: no newlines
    consumer = _consumer(tmp_path, [sys.executable, "noisy.py"])
    with pytest.raises(ConsumerError) as caught:
        consumer.roll(EVENT, stop=threading.Event())
    message = str(caught.value)
    assert message.startswith(
        f"{consumer.name}: exited with status 3; stderr: noise 197 | noise 198 | noise 199"
    )
    assert "adj_live_bbb…[redacted]" in message and key not in message
    assert "bell\\x07 and \\x1b[31mred" in message
    assert "\x07" not in message and "\x1b" not in message
    assert "noise 196" not in message


def test_a_huge_stderr_is_cut_at_a_line_so_no_key_is_half_shown(tmp_path: Path) -> None:
    """Only the end of stderr is read; a key cut by that window is dropped with its line."""
    key = "adj_live_" + "c" * 64
    script = f"import sys; sys.stderr.write('{key}' * 200 + '\\nlast words\\n'); sys.exit(1)"
    consumer = _consumer(tmp_path, [sys.executable, "-c", script])
    with pytest.raises(ConsumerError) as caught:
        consumer.roll(EVENT, stop=threading.Event())
    assert str(caught.value).endswith("exited with status 1; stderr: last words")


def test_a_timeout_ends_the_whole_process_group(tmp_path: Path) -> None:
    """The program and the child it started are both gone after a ConsumerTimeout."""
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "open('child.pid', 'w').write(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    (tmp_path / "parent.py").write_text(script)
    consumer = _consumer(tmp_path, [sys.executable, "parent.py"], timeout="1s")
    started = time.monotonic()
    with pytest.raises(ConsumerTimeout, match=r"did not finish within 1s; its process group was ended"):
        consumer.roll(EVENT, stop=threading.Event())
    assert time.monotonic() - started < 4
    child = int((tmp_path / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the program's child outlived the timeout"


def test_a_program_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    """SIGKILL follows SIGTERM after a short grace, so stop is never held up by the program."""
    script = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    consumer = _consumer(tmp_path, [sys.executable, "-c", script])
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    with pytest.raises(ConsumerError, match="stopped before the command finished"):
        consumer.roll(EVENT, stop=stop)
    assert time.monotonic() - started < 2.5


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True
