"""Shell completion, the way click documents testing it: the real ``rotator`` binary in a
subprocess with ``_ROTATOR_COMPLETE`` and ``COMP_WORDS``/``COMP_CWORD`` set, and the generated
bash script sourced into a real bash and run as bash would on a Tab press."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.shell_completion import ShellComplete

from rotator.cli import cli
from tests.conftest import run_cli

BIN = Path(sys.executable).parent
ROTATOR = BIN / "rotator"
SPEC = """\
version: 1
issuers:
  emu: {type: adjudon, credential: {env: X}}
  lendsqr: {type: adjutor, app_id: app_1}
keys:
  payments: {issuer: emu, targets: [{type: file, path: a}]}
  payroll: {issuer: emu, targets: [{type: file, path: b}]}
  lendsqr-app: {issuer: lendsqr, targets: [{type: file, path: c}]}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "rotations.yaml").write_text(SPEC)
    return tmp_path


def complete(
    cwd: Path, shell: str, words: str, cword: int | str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """One Tab press as ``shell``'s completion script would ask the real binary for it."""
    assert ROTATOR.exists(), f"the rotator entry point is missing beside {sys.executable}"
    clean = {k: v for k, v in os.environ.items() if k != "ROTATOR_FILE"}
    return subprocess.run(
        [str(ROTATOR)],
        cwd=cwd,
        env={
            **clean,
            **(env or {}),
            "_ROTATOR_COMPLETE": f"{shell}_complete",
            "COMP_WORDS": words,
            "COMP_CWORD": str(cword),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def bash_values(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return [line.split(",", 1)[1] for line in proc.stdout.splitlines() if line.startswith("plain,")]


def test_key_names_come_from_the_rotation_file(project: Path) -> None:
    """`rotator status pa<Tab>` offers the declared keys starting with pa, in file order."""
    assert bash_values(complete(project, "bash", "rotator status pa", 2)) == ["payments", "payroll"]
    everything = bash_values(complete(project, "bash", "rotator emergency ", 2))
    assert everything == ["payments", "payroll", "lendsqr-app"]


def test_keys_already_given_are_not_offered_again(project: Path) -> None:
    """apply and plan take several keys: the ones already typed are left out."""
    got = bash_values(complete(project, "bash", "rotator apply payments ", 3))
    assert got == ["payroll", "lendsqr-app"]


def test_file_is_found_by_f_then_rotator_file(
    project: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """-f wins over ROTATOR_FILE, which wins over ./rotations.yaml, as for the commands."""
    other = tmp_path_factory.mktemp("other") / "other.yaml"
    other.write_text(SPEC.replace("payments", "billing").replace("payroll", "bonus"))
    env = {"ROTATOR_FILE": str(other)}
    assert bash_values(complete(project, "bash", "rotator rotate b", 2, env)) == ["billing", "bonus"]
    third = other.with_name("third.yaml")
    third.write_text(SPEC.replace("payments", "pension"))
    words = f"rotator -f {third} rotate pe"
    assert bash_values(complete(project, "bash", words, 4, env)) == ["pension"]


def test_commands_and_options_complete(project: Path) -> None:
    """Subcommands and a command's options come from click itself."""
    assert bash_values(complete(project, "bash", "rotator st", 1)) == ["status"]
    options = bash_values(complete(project, "bash", "rotator apply --", 2))
    assert {"--wait", "--dry-run", "--parallel", "--output"} <= set(options)


def test_zsh_and_fish_get_names_with_their_issuer(project: Path) -> None:
    """zsh and fish show a help text beside each key: its issuer."""
    zsh = complete(project, "zsh", "rotator status lend", 2)
    assert zsh.returncode == 0 and zsh.stdout.splitlines() == ["plain", "lendsqr-app", "issuer lendsqr"]
    fish = complete(project, "fish", "rotator status lend", "lend")
    assert fish.returncode == 0 and fish.stdout.splitlines() == ["plain,lendsqr-app\tissuer lendsqr"]


@pytest.mark.parametrize(
    ("content", "env"),
    [
        (None, {}),
        ("version: 1\nkeys: [not, a, mapping]\n", {}),
        ("{{{ not yaml", {}),
        (b"\xff\xfe binary", {}),
    ],
    ids=["missing", "keys-not-a-mapping", "not-yaml", "not-utf8"],
)
def test_unreadable_file_completes_nothing_quietly(
    tmp_path: Path, content: str | bytes | None, env: dict[str, str]
) -> None:
    """A missing or broken rotation file: no keys, nothing on stderr, exit 0."""
    if isinstance(content, str):
        (tmp_path / "rotations.yaml").write_text(content)
    elif isinstance(content, bytes):
        (tmp_path / "rotations.yaml").write_bytes(content)
    proc = complete(tmp_path, "bash", "rotator status ", 2, env)
    assert proc.returncode == 0 and proc.stderr == "" and proc.stdout.strip() == ""


def test_a_bad_setting_completes_no_keys(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Key completion reads ROTATOR_* settings to find the file; a bad one means no keys, no error."""
    monkeypatch.chdir(project)
    comp = ShellComplete(cli, {}, "rotator", "_ROTATOR_COMPLETE")
    assert [c.value for c in comp.get_completions(["status"], "pay")] == ["payments", "payroll"]
    monkeypatch.setenv("ROTATOR_PARALLEL", "not-a-number")
    assert comp.get_completions(["status"], "pay") == []


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_command_prints_the_script(tmp_path: Path, shell: str) -> None:
    """`rotator completion SHELL` prints click's script wired to _ROTATOR_COMPLETE."""
    proc = run_cli("completion", shell, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"_ROTATOR_COMPLETE={shell}_complete" in proc.stdout
    assert "_rotator_completion" in proc.stdout


def test_unknown_shell_is_one_clear_error(tmp_path: Path) -> None:
    """`rotator completion tcsh` names the shells it knows, exit 2."""
    proc = run_cli("completion", "tcsh", cwd=tmp_path)
    assert proc.returncode == 2
    assert "tcsh" in proc.stderr and "bash" in proc.stderr and "fish" in proc.stderr


def test_bash_script_parses_and_completes_keys_in_a_real_bash(project: Path) -> None:
    """`bash -n` accepts the script; sourced, its function fills COMPREPLY with key names."""
    bash = shutil.which("bash")
    assert bash is not None
    text = run_cli("completion", "bash", cwd=project).stdout
    script = project / "rotator.bash"
    script.write_text(text)
    syntax = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True, check=False)
    assert syntax.returncode == 0, syntax.stderr
    driver = f"""
source {script}
complete -p rotator
COMP_WORDS=(rotator reactivate pay)
COMP_CWORD=2
_rotator_completion rotator
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    proc = subprocess.run(
        [bash, "-c", driver],
        cwd=project,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "complete -o nosort -F _rotator_completion rotator"
    assert lines[1:] == ["payments", "payroll"]
