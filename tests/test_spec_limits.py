"""The rotation file's limits: one parse (libyaml or pure Python, same answer), bounded aliases,
nesting and size, durations, safe names, the TLS rule and verify policies that cannot drain.

The command-line view of each (exit 2, one line, nothing written) is in the bad-input corpus,
tests/test_bad_input.py; these check the rules themselves and their edges.
"""

from __future__ import annotations

import functools
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

import rotator.spec.loader
from rotator.errors import ConfigError
from rotator.net import require_tls, tls_problem
from rotator.sandbox.emulator import EmulatorServer
from rotator.scheduler import Daemon
from rotator.spec import Settings, load_rotation_file, parse_duration, parse_rotation_file
from rotator.yamldoc import ALIAS_ALLOWANCE, MAX_DEPTH, DocumentError, read_document
from tests.e2e_helpers import write_spec
from tests.test_bad_input import ALIAS_BOMB, BASE, FILE_CASES, _file_text
from tests.test_spec import GOOD

ANCHORED = """\
version: 1
defaults:
  verify: &strict {drain: 1h, propagation: 5m, timeout: 24h}
issuers:
  main: {type: adjudon, credential: {env: ADMIN}}
keys:
  a:
    issuer: main
    verify: {<<: *strict, timeout: 48h}
    targets: &two
      - {type: file, path: a.key}
      - {type: file, path: b.key}
  b:
    issuer: main
    targets: *two
"""


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_rotation_file(text, "r.yaml")
    return str(info.value)


# --------------------------------------------------------------------------- one parse


PURE = functools.partial(read_document, loader=yaml.SafeLoader)


@pytest.mark.parametrize("text", [GOOD, ANCHORED, BASE], ids=["design", "anchors", "corpus-base"])
def test_libyaml_and_pure_python_read_the_same(text: str) -> None:
    """The C composer and the pure-Python one give the same data and the same line for every
    path; and the data is what PyYAML's own safe_load makes of the file."""
    (fast, fast_lines), (pure, pure_lines) = read_document(text), PURE(text)
    assert fast == pure == yaml.safe_load(text)
    assert fast_lines.as_dict() == pure_lines.as_dict()
    assert len(fast_lines.as_dict()) > 20


def _reference_index(node: yaml.Node, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], int]:
    """The line index as the loader built it before, eagerly (for files without aliases)."""
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*path, key_node.value)
            lines.update(_reference_index(value_node, child))
            lines[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.update(_reference_index(item, (*path, i)))
    return lines


@pytest.mark.parametrize("text", [GOOD, BASE], ids=["design", "corpus-base"])
def test_lines_are_found_where_the_eager_index_put_them(text: str) -> None:
    """Looked up on demand, every path has the line the former eager index gave it."""
    _, lines = read_document(text)
    expected = _reference_index(yaml.compose(text, Loader=yaml.SafeLoader))
    assert lines.as_dict() == expected
    assert all(lines.get(path) == line for path, line in expected.items())
    assert lines.get(("keys", "nobody")) is None and lines.get(("version", 0)) is None


@pytest.mark.parametrize(
    "case",
    [c for c in FILE_CASES if isinstance(c[1], list)],
    ids=[c[0] for c in FILE_CASES if isinstance(c[1], list)],
)
def test_every_corpus_error_is_the_same_with_the_pure_parser(
    case: tuple[str, Any, tuple[str, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without libyaml, every broken file of the corpus gets the same message, lines included
    (malformed YAML: the same line; the two parsers word the problem each their own way)."""
    text = _file_text(case[1])
    fast = _error(text)
    monkeypatch.setattr(rotator.spec.loader, "read_document", PURE)
    pure = _error(text)
    if ": not valid YAML: " in fast:
        fast, pure = fast.split(": not valid YAML: ")[0], pure.split(": not valid YAML: ")[0]
    assert pure == fast


def test_lines_of_aliased_and_merged_fields() -> None:
    """A merged field points at the line it is written on; an alias at the alias."""
    data, lines = read_document(ANCHORED)
    assert data["keys"]["a"]["verify"] == {"drain": "1h", "propagation": "5m", "timeout": "48h"}
    assert data["keys"]["b"]["targets"] == data["keys"]["a"]["targets"]
    assert lines[("keys", "a", "verify", "drain")] == 3
    assert lines[("keys", "a", "verify", "timeout")] == 9
    assert lines[("keys", "b", "targets")] == 15
    assert lines[("keys", "a", "targets", 1, "path")] == 12
    spec = parse_rotation_file(ANCHORED, "r.yaml")
    assert spec.verify("a").timeout == timedelta(hours=48) and spec.verify("a").drain == timedelta(hours=1)
    assert [t.path for t in spec.keys["b"].targets] == ["a.key", "b.key"]  # type: ignore[union-attr]
    broken = ANCHORED.replace("path: b.key}", "path: b.key, mode: 1}")
    assert _error(broken) == (  # b's copy too, at the line it was written on
        "r.yaml: 2 problems:\n  r.yaml:12: keys.a.targets.1.mode: unknown field\n"
        "  r.yaml:12: keys.b.targets.1.mode: unknown field"
    )


def test_explicit_keys_win_over_merged_ones() -> None:
    """``<<`` fills only the fields the mapping does not write itself, first source first."""
    data, _ = read_document("a: &a {x: 1, y: 1}\nb: &b {y: 2, z: 2}\nc: {<<: [*a, *b], x: 3}\n")
    assert data["c"] == {"x": 3, "y": 1, "z": 2}


def test_duplicate_keys_name_both_lines() -> None:
    """Both parsers refuse a duplicate key with the lines of both copies."""
    text = "a: 1\nb: 2\na: 3\n"
    for read in (read_document, PURE):
        with pytest.raises(DocumentError) as info:
            read(text)
        assert (info.value.line, info.value.message) == (3, "duplicate key 'a' (first on line 1)")


# --------------------------------------------------------------------------- aliases, nesting, size


def test_alias_bomb_refused_before_expanding() -> None:
    """Nine levels of nine aliases (4 billion nodes once expanded) are refused from the tree."""
    for read in (read_document, PURE):
        with pytest.raises(
            DocumentError, match=r"from 30 to 4412961516 nodes; aliases may add at most 10000"
        ):
            read(ALIAS_BOMB)


def test_aliases_within_the_allowance_are_fine() -> None:
    """A shared block used many times is what anchors are for: allowed up to the bound."""
    uses = ALIAS_ALLOWANCE // 5 - 10  # each use of the anchor adds its 5 nodes
    text = "base: &b {x: 1, y: 2}\nuses:\n" + "".join("  - *b\n" for _ in range(uses))
    data, _ = read_document(text)
    assert len(data["uses"]) == uses
    with pytest.raises(DocumentError, match="aliases expand the document"):
        read_document(text + "".join("  - *b\n" for _ in range(2 * 10 + 1)))


def test_aliases_may_double_a_large_file() -> None:
    """Past the fixed allowance, aliases may add as many nodes as the file writes out."""
    written = "".join(f"k{i}: v\n" for i in range(20_000))  # 40,001 nodes
    text = written + "a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9]\nb: [" + ", ".join(["*a"] * 3000) + "]\n"
    data, _ = read_document(text)
    assert len(data["b"]) == 3000
    with pytest.raises(DocumentError, match="aliases may add at most"):
        read_document(text.replace("b: [", "b: [" + "*a, " * 2000))


def test_recursive_alias_refused() -> None:
    """An anchor inside its own collection would be an infinite document."""
    with pytest.raises(DocumentError, match="an alias refers to a collection that contains it") as info:
        read_document("a: 1\nb: &b\n  - x\n  - *b\n")
    assert info.value.line == 2


@pytest.mark.parametrize(
    "text",
    [
        "a: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1),
        "".join(" " * i + "k:\n" for i in range(MAX_DEPTH + 2)),
        # shallow as written, deep through chained aliases
        "".join(
            f"a{i}: &a{i} " + "[" * 20 + (f"*a{i - 1}" if i else "x") + "]" * 20 + "\n" for i in range(5)
        ),
    ],
    ids=["flow", "block", "through-aliases"],
)
def test_deep_nesting_refused(text: str) -> None:
    """Nesting deeper than a rotation file ever needs is refused, with either parser."""
    for read in (read_document, PURE):
        with pytest.raises(DocumentError, match=f"nested deeper than {MAX_DEPTH} levels"):
            read(text)


def test_nesting_up_to_the_bound_is_read() -> None:
    """The bound is not off by one."""
    data, _ = read_document("a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1))
    assert isinstance(data["a"], list)


def test_size_cap_on_text_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over 1 MiB is refused, naming the size and the cap; ROTATOR_MAX_FILE_MIB raises it."""
    padded = BASE + "#" + "x" * (1 << 20) + "\n"
    monkeypatch.delenv("ROTATOR_MAX_FILE_MIB", raising=False)
    assert _error(padded) == (
        f"r.yaml: the rotation file is {len(padded)} bytes, over the 1 MiB cap (set ROTATOR_MAX_FILE_MIB to raise it)"
    )
    path = tmp_path / "r.yaml"
    path.write_text(padded)
    with pytest.raises(ConfigError, match=f"is {len(padded)} bytes, over the 1 MiB cap"):
        load_rotation_file(path)
    # multi-byte characters count as bytes, not characters
    wide = BASE + "#" + "é" * (1 << 19) + "\n"
    assert len(wide) < 1 << 20 and "over the 1 MiB cap" in _error(wide)
    monkeypatch.setenv("ROTATOR_MAX_FILE_MIB", "2")
    assert list(load_rotation_file(path).keys) == ["payments"]
    for bad in ("0", "lots", "65"):
        monkeypatch.setenv("ROTATOR_MAX_FILE_MIB", bad)
        with pytest.raises(ConfigError, match="ROTATOR_MAX_FILE_MIB: a whole number of MiB from 1 to 64"):
            load_rotation_file(path)


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize("value", [float("inf"), 10**20, "999999999999d", "3651d", "522w", "87601h"])
def test_durations_over_ten_years_refused(value: object) -> None:
    """A duration past ten years is a typo, and past timedelta's range an overflow: both refused."""
    with pytest.raises(ValueError, match=r"longer than the 3650d \(10 years\)"):
        parse_duration(value)


def test_ten_years_is_allowed() -> None:
    """The bound itself is a valid duration; NaN is not a duration at all."""
    assert parse_duration("3650d") == timedelta(days=3650)
    with pytest.raises(ValueError, match="a duration like"):
        parse_duration(float("nan"))


def test_yaml_infinity_names_field_and_line() -> None:
    """``.inf`` in the file: the field, the line and the bound, not an OverflowError."""
    message = _error(GOOD.replace("propagation: 2m", "propagation: .inf"))
    assert (
        message
        == "r.yaml:5: defaults.verify.propagation: inf is longer than the 3650d (10 years) a duration may be"
    )


# --------------------------------------------------------------------------- names and text


@pytest.mark.parametrize("name", ["a", "payments", "lendsqr-app", "svc_01.eu", "9lives", "x" * 128])
def test_safe_names_accepted(name: str) -> None:
    """The README's names and the charset's edges are valid key and issuer names."""
    text = (
        BASE.replace("  payments:", f"  {name}:")
        .replace("  emu:", f"  {name}:")
        .replace("issuer: emu", f"issuer: {name}")
    )
    assert list(parse_rotation_file(text).keys) == [name]


@pytest.mark.parametrize(
    "name",
    [
        "-lead",
        ".hidden",
        "x" * 129,
        "a b",
        "a/b",
        "a:b",
        "é",
        "a\u202eb",
        "a\u2066b",
        '"a\\nb"',
        '"a\\tb"',
        '"a\\u0000b"',
    ],
)
def test_unsafe_names_refused_without_echoing_them(name: str) -> None:
    """Every name outside the charset is refused with its line; the message never carries a raw
    control or bidi character, so it cannot forge a line of its own."""
    message = _error(BASE.replace("  payments:", f"  {name}:"))
    assert message.startswith("r.yaml:12: keys.") and "a name is 1 to 128 letters" in message
    assert message.isprintable()


@pytest.mark.parametrize(
    ("target", "field"),
    [
        ('{type: file, path: "a\\nb"}', "path"),
        ('{type: aws, secret_id: "prod/\\u202ex"}', "secret_id"),
        ('{type: vault, url: "https://v:8200", path: "a\\rb"}', "path"),
        ('{type: gcp, project: p, secret: "s\\u2067"}', "secret"),
    ],
)
def test_control_characters_in_targets_refused(target: str, field: str) -> None:
    """Paths and ids are printed by plan and status: no control or bidi characters in them."""
    message = _error(
        BASE.replace("{type: file, path: secrets/a.env, format: dotenv, field: ADJUDON_API_KEY}", target)
    )
    assert (
        message
        == f"r.yaml:17: keys.payments.targets.0.{field}: control characters and bidirectional overrides are not allowed"
    )


# --------------------------------------------------------------------------- TLS


URL_FIELDS = {
    "issuers.emu.base_url": lambda url: BASE.replace("http://127.0.0.1:9", url),
    "issuers.emu.endpoint_url": lambda url: BASE.replace(
        "    type: adjudon\n    base_url: http://127.0.0.1:9\n    credential: {env: BAD_INPUT_ADMIN_KEY}",
        f"    type: aws_iam\n    user_name: u\n    endpoint_url: '{url}'",
    ).replace("    kind: agent\n    agent_id: payments\n", ""),
    "keys.payments.targets.0.endpoint_url": lambda url: BASE.replace(
        "{type: file, path: secrets/a.env, format: dotenv, field: ADJUDON_API_KEY}",
        f"{{type: aws, secret_id: s, endpoint_url: '{url}'}}",
    ),
    "keys.payments.targets.0.url": lambda url: BASE.replace(
        "{type: file, path: secrets/a.env, format: dotenv, field: ADJUDON_API_KEY}",
        f"{{type: vault, url: '{url}', path: p}}",
    ),
    "lease.endpoint_url": lambda url: BASE.replace(
        "state_dir: state",
        f"state_dir: state\nlease: {{type: dynamodb, table: locks, endpoint_url: '{url}'}}",
    ),
}
LOOPBACK = [
    "http://127.0.0.1:8200",
    "http://127.8.9.10",
    "http://[::1]:8200",
    "http://localhost:1",
    "http://LOCALHOST",
]
NOT_LOOPBACK = [
    "http://127.0.0.1.nip.io:8200",
    "http://localhost.example.com",
    "http://localhost@evil.example",
    "http://0.0.0.0:1",
    "http://[::ffff:8.8.8.8]",
    "http://10.0.0.1",
    "ftp://127.0.0.1",
]


@pytest.mark.parametrize("field", sorted(URL_FIELDS))
def test_tls_rule_at_validate_on_every_endpoint(field: str) -> None:
    """Every URL field of issuers, targets and the lease: https anywhere, plain http only to a
    loopback literal (judged on the host as written, not on how the name begins)."""
    make = URL_FIELDS[field]
    for url in [*LOOPBACK, "https://vault.example.com:8200"]:
        parse_rotation_file(make(url))
    for url in NOT_LOOPBACK:
        message = _error(make(url))
        assert f": {field}: " in message and "only https, or plain http to a loopback address" in message, url


def test_one_rule_for_validate_and_the_clients() -> None:
    """validate and the clients' check (require_tls) are the same rule, word for word; a
    password in the URL never reaches the message."""
    for url in [*LOOPBACK, *NOT_LOOPBACK]:
        problem = tls_problem(url)
        if problem is None:
            require_tls("x", url)
        else:
            with pytest.raises(ConfigError) as info:
                require_tls("x", url)
            assert str(info.value) == f"x: {problem}"
    message = _error(URL_FIELDS["keys.payments.targets.0.url"]("http://user:cnyhunter2@vault:8200"))
    assert "cnyhunter2" not in message and "'http://vault:8200'" in message


# --------------------------------------------------------------------------- verify policies


def test_timeout_shorter_than_propagation_and_drain() -> None:
    """A timeout that ends before the drain can is refused, naming the three values; equal is fine."""
    assert _error(GOOD.replace("timeout: 24h", "timeout: 16m")) == (
        "r.yaml:5: defaults.verify.timeout: timeout 16m is shorter than propagation 2m + drain 15m: "
        "every rotation would be held; make it at least 17m"
    )
    parse_rotation_file(GOOD.replace("timeout: 24h", "timeout: 17m"))


def test_timeout_rule_applies_to_the_policy_each_key_gets() -> None:
    """A key's own verify block replaces the defaults: it is checked, with the model's defaults
    for what it leaves out; unused defaults are not held against the file."""
    own = BASE.replace("    kind: agent", "    kind: agent\n    verify: {timeout: 10m}")
    assert "keys.payments.verify.timeout: timeout 10m is shorter than propagation 2m + drain 15m" in _error(
        own
    )
    unused = own.replace("verify: {timeout: 10m}", "verify: {timeout: 1h}").replace(
        "timeout: 60s", "timeout: 1s"
    )
    assert parse_rotation_file(unused).verify("payments").timeout == timedelta(hours=1)


# --------------------------------------------------------------------------- the other readers


def test_serve_reload_refuses_an_alias_bomb(
    tmp_path: Path, emulator: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGHUP's reload reads with the same loader: the bomb is one error line, the old file stays."""
    path = write_spec(tmp_path, emulator)
    daemon = Daemon(path, settings=Settings(retry_initial=0.01, probe_timeout=5))
    daemon.start(paused=True)
    try:
        path.write_text(path.read_text() + ALIAS_BOMB)
        with caplog.at_level(logging.INFO, logger="rotator.scheduler"):
            assert not daemon.reload()
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "aliases expand the document" in errors[0], errors
        assert list(daemon.spec.keys) == ["payments"]
    finally:
        daemon.stop()


def test_lambda_content_refuses_an_alias_bomb(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """ROTATOR_FILE_CONTENT goes through the same loader: the bomb is a ConfigError."""
    from rotator.lambda_handler import load_spec, settings

    for name in ("ROTATOR_FILE_S3", "ROTATOR_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ROTATOR_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("ROTATOR_FILE_CONTENT", ALIAS_BOMB)
    with pytest.raises(ConfigError, match="ROTATOR_FILE_CONTENT: aliases expand the document"):
        load_spec(settings())


def test_lambda_s3_file_over_the_cap_is_not_downloaded_whole(
    moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """ROTATOR_FILE_S3: an object over the cap is refused with its size; at most the cap is read
    and nothing lands in the state directory."""
    import uuid

    import boto3

    from rotator.lambda_handler import load_spec, settings

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_ENDPOINT_URL_S3": moto_server,
        "ROTATOR_STATE_DIR": str(tmp_path / "state"),
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "ROTATOR_FILE_CONTENT", "ROTATOR_MAX_FILE_MIB"):
        monkeypatch.delenv(name, raising=False)
    bucket = f"rotator-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", region_name="eu-west-1", endpoint_url=moto_server)
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    body = (BASE + "#" + "x" * (3 << 20) + "\n").encode()
    s3.put_object(Bucket=bucket, Key="big.yaml", Body=body)
    monkeypatch.setenv("ROTATOR_FILE_S3", f"s3://{bucket}/big.yaml")
    with pytest.raises(ConfigError) as info:
        load_spec(settings())
    assert str(info.value) == (
        f"s3://{bucket}/big.yaml: the rotation file is {len(body)} bytes, over the 1 MiB cap "
        "(set ROTATOR_MAX_FILE_MIB to raise it)"
    )
    assert not (tmp_path / "state").exists()
    monkeypatch.setenv("ROTATOR_MAX_FILE_MIB", "4")
    assert list(load_spec(settings())[0].keys) == ["payments"]


def test_bad_cap_setting_is_one_line_exit_2(tmp_path: Path) -> None:
    """A cap that is not a whole number of MiB in range: one line naming the variable, exit 2."""
    from tests.conftest import run_cli

    (tmp_path / "rotations.yaml").write_text(BASE)
    done = run_cli("validate", cwd=tmp_path, env={"ROTATOR_MAX_FILE_MIB": "1.5"})
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "rotator: error: ROTATOR_MAX_FILE_MIB: a whole number of MiB from 1 to 64\n"
