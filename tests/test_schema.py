"""The rotation file's JSON Schema: current with the models, valid, and agreeing with them.

The schema is generated from the pydantic models; the shipped copy is regenerated with
``rotator schema --builtin > schema/rotations.schema.json``. Files are checked by the real
``check-jsonschema`` command (the one editors' pre-commit hooks run), as a subprocess.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from rotator.errors import ConfigError
from rotator.schema import DURATION_PATTERN, rotation_file_schema
from rotator.spec import parse_duration, parse_rotation_file
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "schema" / "rotations.schema.json"
REGENERATE = "rotator schema --builtin > schema/rotations.schema.json"
CHECKER = Path(sys.executable).parent / "check-jsonschema"

# A minimal whole file, by top-level section: README fragments (a lease block, an issuer and
# its key, ...) get the sections they lack, and keep their own text as written.
BASE_SECTIONS = {
    "version": "version: 1\n",
    "issuers": "issuers:\n  adjudon-prod: {type: adjudon, credential: {env: ADJUDON_ADMIN_KEY}}\n",
    "keys": (
        "keys:\n  payments:\n    issuer: adjudon-prod\n    targets: [{type: file, path: payments.key}]\n"
        # the Notifications example takes its URL from a declared key
        "  notify-webhook:\n    issuer: adjudon-prod\n    targets: [{type: file, path: hook.url}]\n"
    ),
}
BASE: dict[str, Any] = yaml.safe_load("".join(BASE_SECTIONS.values()))


def readme_examples() -> list[tuple[str, str]]:
    """Every fenced yaml block of the README that is a rotation file or a fragment of one,
    as the text of a whole file (named by the line the block starts on)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    out = []
    for match in re.finditer(r"^```yaml\n(.*?)^```", text, flags=re.S | re.M):
        block = match.group(1)
        data = yaml.safe_load(block)
        if not isinstance(data, dict) or {"apiVersion", "kind"} <= data.keys():
            continue  # a Kubernetes manifest or a non-mapping: not a rotation file
        missing = "".join(v for k, v in BASE_SECTIONS.items() if k not in data)
        line = text.count("\n", 0, match.start()) + 1
        out.append((f"readme-line-{line}.yaml", missing + block))
    return out


def check(*files: Path, schema: Path = SHIPPED) -> subprocess.CompletedProcess[str]:
    """Run the real check-jsonschema on ``files`` against ``schema``, offline."""
    if not CHECKER.exists():
        pytest.fail(f"check-jsonschema is missing beside {sys.executable}: pip install -e '.[test]'")
    return subprocess.run(
        [str(CHECKER), "--schemafile", str(schema), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_shipped_schema_is_what_rotator_schema_prints(tmp_path: Path) -> None:
    """`rotator schema` prints exactly the shipped file: a model change shows up as a stale schema."""
    proc = run_cli("schema", "--builtin", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert SHIPPED.exists(), f"{SHIPPED.name} is missing: run `{REGENERATE}`"
    assert proc.stdout == SHIPPED.read_text(encoding="utf-8"), (
        f"schema/rotations.schema.json is stale (the models changed): run `{REGENERATE}` and commit it"
    )


def test_schema_is_valid_draft_2020_12() -> None:
    """The schema itself passes its metaschema, and names itself."""
    if not CHECKER.exists():
        pytest.fail(f"check-jsonschema is missing beside {sys.executable}")
    proc = subprocess.run(
        [str(CHECKER), "--check-metaschema", str(SHIPPED)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    schema = rotation_file_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] and schema["title"]


def test_readme_examples_validate_against_the_schema_and_the_models(tmp_path: Path) -> None:
    """Every README rotation-file example passes check-jsonschema, and the models accept it too."""
    examples = readme_examples()
    assert len(examples) >= 3, [name for name, _ in examples]  # the file, the lease, the IAM issuer
    files = []
    for name, whole in examples:
        path = tmp_path / name
        path.write_text(whole)
        files.append(path)
    proc = check(*files)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok -- validation done" in proc.stdout, proc.stdout
    for name, whole in examples:
        parse_rotation_file(whole, name)  # raises ConfigError with the line at fault


def test_readme_editor_example_names_the_schema() -> None:
    """The README's whole-file example starts with the yaml-language-server comment."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    first = re.search(r"^```yaml\n(.*?)^```", text, flags=re.S | re.M)
    assert first is not None
    assert first.group(1).startswith("# yaml-language-server: $schema=rotations.schema.json\n")
    assert "rotator schema > rotations.schema.json" in text


def test_deploy_configmap_rotation_file_validates(tmp_path: Path) -> None:
    """The rotation file shipped in deploy/k8s/configmap.yaml passes the schema too."""
    cm = yaml.safe_load((REPO / "deploy/k8s/configmap.yaml").read_text())
    path = tmp_path / "configmap-rotations.yaml"
    path.write_text(cm["data"]["rotations.yaml"])
    proc = check(path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


BROKEN = {
    "bad-duration.yaml": ("defaults: {verify: {drain: 15x}}", "15x"),
    "iso-duration.yaml": ("defaults: {max_age: P30D}", "P30D"),
    "negative-duration.yaml": ("defaults: {max_age: -5}", "-5"),
    "unknown-field.yaml": ("state_dir: s\ncolour: blue", "colour"),
    "cron-four-fields.yaml": (
        "keys: {k: {issuer: base, schedule: '0 3 * *', targets: [{type: file, path: k}]}}",
        "0 3 * *",
    ),
    "target-without-type.yaml": ("keys: {k: {issuer: base, targets: [{path: k}]}}", "targets"),
    "lease-without-type.yaml": ("lease: {}", "lease"),
    "unknown-issuer-type.yaml": ("issuers: {base: {type: stripe, credential: {env: X}}}", "issuers"),
    "wrong-version.yaml": ("version: 2", "version"),
}


def test_schema_rejects_what_the_models_reject(tmp_path: Path) -> None:
    """Bad durations (ISO 8601 included), unknown fields, a 4-field cron, a union member
    without its type: check-jsonschema names each file, and the models refuse each too."""
    files = []
    for name, (fragment, _) in BROKEN.items():
        data = {**BASE, **yaml.safe_load(fragment)}
        text = yaml.safe_dump(data, sort_keys=False)
        with pytest.raises(ConfigError):
            parse_rotation_file(text, name)
        (tmp_path / name).write_text(text)
        files.append(tmp_path / name)
    proc = check(*files)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for path in files:
        assert f"{path}::" in proc.stdout, f"{path.name} passed the schema:\n{proc.stdout}"


def _reads(text: str) -> bool:
    try:
        parse_duration(text)
    except ValueError:
        return False
    return True


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.sampled_from(["0", "7", "12", ".", "5.5", "ms", "m s", "s", "m", "h", "d", "w", " ", "\t", "x"]),
        max_size=6,
    ).map("".join)
)
def test_duration_pattern_accepts_exactly_what_parse_duration_reads(text: str) -> None:
    """The schema's duration pattern and the model's parser agree on the spelling of durations.

    Digits are compared as zeros too, so a bound on how long a duration may be (which a pattern
    cannot express) does not count as a disagreement; a value the parser reads always passes.
    """
    validator = jsonschema.Draft202012Validator({"type": "string", "pattern": DURATION_PATTERN})
    if _reads(text):
        assert validator.is_valid(text), repr(text)
    assert validator.is_valid(text) == _reads(re.sub("[0-9]", "0", text)), repr(text)
