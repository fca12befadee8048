"""The ``command`` consumer: run a program, without a shell, once the new key is everywhere.

Exit 0 is success. The program runs in a session (process group) of its own, with stdin from
``/dev/null``, stdout discarded and stderr kept in a temporary file whose last lines explain a
failure. On ``timeout`` the whole group is terminated (then killed) and the roll is a
:class:`~rotator.errors.ConsumerTimeout`; ``stop`` does the same and raises ``ConsumerError``.
A program that starts a long-lived service must detach it into a session of its own
(``setsid``, ``systemd-run``, a service manager), or a timeout ends it too.

The environment is built, not inherited: the rotator's process holds the vendors' management
credentials, and a restart script has no use for them. The program gets only the variables
named in :data:`PASSED` (and ``LC_*``) that the rotator has, plus the event in ``ROTATOR_*``
(:func:`event_env`); never the key's value, which the program reads where its service does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

from rotator.abc import RollEvent
from rotator.errors import ConsumerError, ConsumerTimeout
from rotator.logs import redact

if TYPE_CHECKING:
    from rotator.builtin.consumers import CommandConsumer

log = logging.getLogger("rotator.consumers")

PASSED = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "XDG_RUNTIME_DIR",
    "DBUS_SESSION_BUS_ADDRESS",
    "KUBECONFIG",
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "DOCKER_HOST",
)
"""Variables of the rotator's environment a command gets (with every ``LC_*``): where to find
programs and configuration, never a credential's value."""

GRACE = 0.5
"""Seconds between SIGTERM and SIGKILL when the group is ended."""
TAIL_LINES = 5
TAIL_CHARS = 600
_TAIL_BYTES = 4096
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def event_env(event: RollEvent) -> dict[str, str]:
    """The roll event as the program sees it: ``ROTATOR_KEY``, ``ROTATOR_ATTEMPT``, ..."""
    return {f"ROTATOR_{name.upper()}": value for name, value in event.to_dict().items()}


def command_env(event: RollEvent, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The whole environment of the program: :data:`PASSED` from ``environ``, and the event."""
    source = dict(os.environ) if environ is None else environ
    kept = {k: v for k, v in source.items() if k in PASSED or k.startswith("LC_")}
    return {**kept, **event_env(event)}


class CommandRoll:
    """Runs ``argv`` in ``cwd`` for each roll; see the module docstring."""

    def __init__(self, name: str, argv: list[str], cwd: Path, timeout: float) -> None:
        self._name = name
        self.argv = list(argv)
        self.cwd = cwd
        self.timeout = timeout

    @property
    def name(self) -> str:
        return self._name

    def roll(self, event: RollEvent, *, stop: threading.Event) -> None:
        if not self.cwd.is_dir():
            raise ConsumerError(self.name, f"working directory {str(self.cwd)!r} does not exist")
        started = time.monotonic()
        with tempfile.TemporaryFile() as stderr:
            proc = self._start(event, stderr)
            code = self._wait(proc, stop, started)
            if code != 0:
                raise ConsumerError(self.name, f"{_exit_text(code)}{_tail(stderr)}")
        log.info("%s: rolled in %.1fs", self.name, time.monotonic() - started)

    def _start(self, event: RollEvent, stderr: IO[bytes]) -> subprocess.Popen[bytes]:
        try:
            return subprocess.Popen(  # noqa: S603 - the rotation file's argv, no shell, on purpose
                self.argv,
                cwd=self.cwd,
                env=command_env(event),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
                close_fds=True,
            )
        except FileNotFoundError:
            raise ConsumerError(self.name, f"program {self.argv[0]!r} not found") from None
        except PermissionError:
            raise ConsumerError(self.name, f"program {self.argv[0]!r} is not executable") from None
        except OSError as exc:
            problem = f"program {self.argv[0]!r} could not start: {exc.strerror}"
            raise ConsumerError(self.name, problem) from None

    def _wait(self, proc: subprocess.Popen[bytes], stop: threading.Event, started: float) -> int:
        deadline = started + self.timeout
        while True:
            try:
                return proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                pass
            if stop.is_set():
                _end_group(proc)
                raise ConsumerError(self.name, "stopped before the command finished")
            if time.monotonic() >= deadline:
                _end_group(proc)
                raise ConsumerTimeout(
                    self.name, f"did not finish within {self.timeout:g}s; its process group was ended"
                )


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the program's whole process group, SIGKILL what is left after :data:`GRACE`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=GRACE if sig == signal.SIGTERM else 5.0)
        except subprocess.TimeoutExpired:
            continue
        if not _group_alive(proc.pid):
            return


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def _tail(stderr: IO[bytes]) -> str:
    """The last lines of the program's stderr, bounded, control characters escaped, and
    anything shaped like a key masked (the program is the user's; it could echo one)."""
    stderr.seek(0, os.SEEK_END)
    size = stderr.tell()
    stderr.seek(max(0, size - _TAIL_BYTES))
    text = stderr.read().decode("utf-8", "replace")
    if size > _TAIL_BYTES:  # the first line read may start mid-key, where redact cannot see it
        text = text.partition("\n")[2]
    lines = [line.strip() for line in text.splitlines() if line.strip()][-TAIL_LINES:]
    if not lines:
        return ""
    shown = redact(" | ".join(_CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}", line) for line in lines))
    if len(shown) > TAIL_CHARS:
        shown = "…" + shown[-TAIL_CHARS:]
    return f"; stderr: {shown}"


def make_consumer(spec: CommandConsumer, *, key: str, base_dir: Path) -> CommandRoll:
    cwd = Path(spec.cwd) if spec.cwd else base_dir
    if not cwd.is_absolute():
        cwd = base_dir / cwd
    return CommandRoll(spec.label(), list(spec.argv), cwd, spec.timeout.total_seconds())
