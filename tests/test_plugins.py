"""The plugin registry (rotator.plugins): what a broken or clashing plugin gets, and that
nothing is imported before a rotation file names it.

Each test installs a small distribution of its own into a temporary directory (a real
``*.dist-info`` with ``entry_points.txt``, found by importlib.metadata on ``PYTHONPATH``)
and runs the real command line in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import run_cli

BASE_FILE = """\
version: 1
issuers:
  a: {type: adjudon, credential: {env: X}}
  b: {type: TYPE}
keys:
  k: {issuer: a, targets: [{type: file, path: k.key}]}
"""


def _install(site: Path, module: str, source: str, entry: str) -> dict[str, str]:
    """A distribution ``probe-plugin`` with ``module`` and one ``rotator.issuers`` entry point;
    the environment that makes it visible."""
    (site / f"{module}.py").write_text(source)
    info = site / "probe_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: probe-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[rotator.issuers]\n{entry}\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def _validate(tmp_path: Path, env: dict[str, str], issuer_type: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "rotations.yaml").write_text(BASE_FILE.replace("TYPE", issuer_type))
    return run_cli("validate", cwd=tmp_path, env=env)


def test_a_plugin_that_fails_to_import_is_one_error_line(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    env = _install(
        site, "broken_plugin", "raise ImportError('missing sdk')\n", "broken = broken_plugin:Model"
    )
    proc = _validate(tmp_path, env, "broken")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "rotator: error: rotator.issuers plugin 'broken' (broken_plugin:Model) failed to load: ImportError"
    ]


def test_a_plugin_object_that_is_not_an_issuer_model_is_refused(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    source = (
        "from typing import Literal\nfrom pydantic import BaseModel\n"
        "class Model(BaseModel):\n    type: Literal['odd']\n"
        "from rotator.spec import IssuerModel\n"
        "class Mislabelled(IssuerModel):\n    type: Literal['other']\n"
    )
    env = _install(site, "odd_plugin", source, "odd = odd_plugin:Model\nmislabelled = odd_plugin:Mislabelled")
    proc = _validate(tmp_path, env, "odd")
    assert proc.returncode == 2
    assert "plugin 'odd' (odd_plugin:Model) is not a IssuerModel subclass" in proc.stderr
    proc = _validate(tmp_path, env, "mislabelled")
    assert proc.returncode == 2
    assert (
        "plugin 'mislabelled' (odd_plugin:Mislabelled): its model needs `type: Literal['mislabelled']`"
        in (proc.stderr)
    )


def test_a_builtin_name_cannot_be_taken_over(tmp_path: Path) -> None:
    """A plugin registering ``adjudon`` again is ignored: the built-in model validates the file."""
    site = tmp_path / "site"
    site.mkdir()
    source = (
        "from typing import Literal\nfrom rotator.spec import IssuerModel\n"
        "class Model(IssuerModel):\n    type: Literal['adjudon']\n"
        "open('IMPORTED', 'w').close()\n"
    )
    env = _install(site, "thief_plugin", source, "adjudon = thief_plugin:Model")
    (tmp_path / "rotations.yaml").write_text(BASE_FILE.replace("  b: {type: TYPE}\n", ""))
    proc = run_cli("validate", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "IMPORTED").exists()


def test_an_unnamed_plugin_is_never_imported(tmp_path: Path) -> None:
    """--help, validate and plan of a file that does not name a plugin never import it."""
    site = tmp_path / "site"
    site.mkdir()
    env = _install(site, "loud_plugin", "open('IMPORTED', 'w').close()\n", "loud = loud_plugin:Model")
    (tmp_path / "rotations.yaml").write_text(BASE_FILE.replace("  b: {type: TYPE}\n", ""))
    assert run_cli("--help", cwd=tmp_path, env=env).returncode == 0
    assert run_cli("validate", cwd=tmp_path, env=env).returncode == 0
    assert not (tmp_path / "IMPORTED").exists()
    proc = _validate(tmp_path, env, "loud")  # named: now it is imported (and refused)
    assert proc.returncode == 2 and (tmp_path / "IMPORTED").exists()


def test_registry_lists_the_builtins_in_their_distribution() -> None:
    code = (
        "from rotator import plugins\n"
        "print([(n, plugins.distribution(plugins.ISSUERS, n)) for n in plugins.names(plugins.ISSUERS)][:3])\n"
        "print(sorted(n for n in plugins.names(plugins.STORES) if plugins.distribution(plugins.STORES, n) == 'rotator'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.splitlines() == [
        "[('adjudon', 'rotator'), ('adjutor', 'rotator'), ('aws_iam', 'rotator')]",
        "['aws', 'file', 'gcp', 'github', 'kubernetes', 'lambda_env', 'vault']",
    ]
