"""The rotation file: the shape DESIGN.md shows, and one clear error per problem with its line."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from rotator.errors import ConfigError
from rotator.spec import format_duration, load_rotation_file, parse_duration, parse_rotation_file

GOOD = """\
version: 1
state_dir: .rotator
defaults:
  max_age: 30d
  verify: {drain: 15m, propagation: 2m, timeout: 24h, on_timeout: hold}
issuers:
  adjudon-prod:
    type: adjudon
    base_url: https://api.adjudon.com
    credential: {key: adjudon-admin}
  lendsqr:
    type: adjutor
    base_url: https://adjutor.lendsqr.com
    app_id: app_123
keys:
  adjudon-admin:
    issuer: adjudon-prod
    kind: workspace
    targets:
      - {type: vault, url: https://vault:8200, mount: secret, path: rotator/adjudon-admin, field: api_key}
  payments:
    issuer: adjudon-prod
    kind: agent
    agent_id: payments
    schedule: "0 3 * * MON"
    strategy: overlap
    targets:
      - {type: aws,   secret_id: prod/payments/adjudon, region: eu-central-1, field: ADJUDON_API_KEY}
      - {type: vault, url: https://vault:8200, mount: secret, path: payments/adjudon, field: api_key}
      - {type: gcp,   project: acme-prod, secret: adjudon-api-key}
      - {type: file,  path: secrets/payments.env, format: dotenv, field: ADJUDON_API_KEY}
  lendsqr-app:
    issuer: lendsqr
    targets:
      - {type: aws, secret_id: prod/lendsqr/adjutor, region: eu-west-1}
"""


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_rotation_file(text, "r.yaml")
    return str(info.value)


def test_design_example_parses() -> None:
    """The file DESIGN.md shows is valid, with its defaults and forced cutover."""
    spec = parse_rotation_file(GOOD)
    assert spec.defaults.verify.drain == timedelta(minutes=15)
    assert spec.strategy("lendsqr-app") == "cutover"
    assert spec.strategy("payments") == "overlap"
    assert [t.type for t in spec.keys["payments"].targets] == ["aws", "vault", "gcp", "file"]
    assert spec.max_age("payments") == timedelta(days=30)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("drain: 15m", "drain: 15x"), "r.yaml:5: defaults.verify.drain: '15x' is not a duration"),
        (
            ("region: eu-west-1}", "region: eu-west-1, colour: red}"),
            "r.yaml:35: keys.lendsqr-app.targets.0.colour: unknown field",
        ),
        (
            ("issuer: lendsqr\n", "issuer: nobody\n"),
            "r.yaml:33: keys.lendsqr-app.issuer: unknown issuer 'nobody'",
        ),
        (
            (
                "    targets:\n      - {type: aws, secret_id: prod/lendsqr",
                "    targets: []\n    x:\n      - {type: aws, secret_id: prod/lendsqr",
            ),
            "keys.lendsqr-app.targets: List should have at least 1 item",
        ),
        (
            (
                "{type: gcp,   project: acme-prod, secret: adjudon-api-key}",
                "{type: gcp, project: acme-prod}",
            ),
            "r.yaml:30: keys.payments.targets.2.secret: required field is missing",
        ),
        (('schedule: "0 3 * * MON"', 'schedule: "0 3 * * FUNDAY"'), "keys.payments.schedule"),
        (
            ("type: adjutor", "type: adjudicator"),
            "r.yaml:11: issuers.lendsqr: Input tag 'adjudicator'",
        ),
        (
            ("credential: {key: adjudon-admin}", "credential: {key: nobody}"),
            "r.yaml:10: issuers.adjudon-prod.credential.key: no key named 'nobody'",
        ),
        (("    agent_id: payments\n", ""), "kind agent needs an agent_id"),
        (("version: 1", "version: 2"), "r.yaml:1: version"),
    ],
)
def test_errors_name_field_and_line(change: tuple[str, str], expected: str) -> None:
    """Each broken file gives an error naming the field path and, where known, the line."""
    old, new = change
    assert old in GOOD
    assert expected in _error(GOOD.replace(old, new, 1))


def test_every_problem_is_listed() -> None:
    """Two problems in one file are both reported, each on its own line."""
    text = GOOD.replace("drain: 15m", "drain: soon").replace("max_age: 30d", "max_age: never")
    message = _error(text)
    assert "2 problems" in message
    assert "defaults.max_age" in message
    assert "defaults.verify.drain" in message


def test_yaml_syntax_error_has_line() -> None:
    """Broken YAML is one error with the line of the problem."""
    assert _error("version: 1\nissuers: {a: [\n").startswith("r.yaml:3: not valid YAML")


def test_duplicate_keys_are_errors() -> None:
    """YAML silently keeps the last duplicate; the rotation file refuses it."""
    text = GOOD.replace("  lendsqr-app:\n", "  payments:\n", 1)
    assert "duplicate key 'payments'" in _error(text)


def test_not_a_mapping() -> None:
    """A file that is a list or a scalar says what shape is expected."""
    assert "must be a mapping" in _error("- 1\n- 2\n")


def test_overlap_refused_for_reset_vendor() -> None:
    """A reset-only vendor cannot overlap; asking for it is an error, not a silent cutover."""
    text = GOOD.replace(
        "      - {type: aws, secret_id: prod/lendsqr",
        "    strategy: overlap\n    targets:\n      - {type: aws, secret_id: prod/lendsqr",
    ).replace("    issuer: lendsqr\n    targets:\n", "    issuer: lendsqr\n")
    assert "overlap is impossible" in _error(text)


def test_missing_file(tmp_path: Path) -> None:
    """A missing file names the path and how to point at another."""
    with pytest.raises(ConfigError, match="no such rotation file"):
        load_rotation_file(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15m", 900), ("2h30m", 9000), ("30d", 2592000), ("500ms", 0.5), (90, 90), ("1w", 604800)],
)
def test_durations(text: str | int, seconds: float) -> None:
    """Durations accept unit suffixes and combinations."""
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("bad", ["", "15", "m", "15 minutes", "-5m", True, [1]])
def test_bad_durations(bad: object) -> None:
    """Anything that is not a duration is refused."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_format_duration_round_trips() -> None:
    """format_duration writes what parse_duration reads."""
    for text in ("1d2h3m4s", "15m", "500ms", "0s"):
        assert format_duration(parse_duration(text)) == text


@pytest.mark.parametrize(
    ("expr", "weekday"),
    [
        ("0 3 * * 0", "sun"),
        ("0 3 * * 7", "sun"),
        ("0 3 * * 1", "mon"),
        ("0 3 * * MON", "mon"),
        ("0 3 * * 1-5", "mon,tue,wed,thu,fri"),
        ("0 3 * * 5-7", "sun,fri,sat"),
        ("0 3 * * */2", "sun,tue,thu,sat"),
        ("0 3 * * sat,0", "sun,sat"),
        ("0 3 * * *", "*"),
    ],
)
def test_cron_weekdays_are_standard(expr: str, weekday: str) -> None:
    """Numeric weekdays follow cron (0 and 7 are Sunday), not APScheduler's 0 = Monday."""
    from datetime import UTC, datetime

    from rotator.spec import _cron_weekdays, cron_trigger

    assert _cron_weekdays(expr.split()[4]) == weekday
    fire = cron_trigger(expr).get_next_fire_time(None, datetime(2026, 11, 22, tzinfo=UTC))  # a Sunday
    names = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
    assert weekday == "*" or names[fire.weekday()] in weekday.split(",")


@pytest.mark.parametrize("expr", ["0 3 * *", "0 3 * * 8", "0 3 * * 5-2", "61 * * * *", "0 3 * * funday"])
def test_bad_cron_expressions(expr: str) -> None:
    """A malformed schedule is a ConfigError naming the field."""
    text = GOOD.replace('schedule: "0 3 * * MON"', f'schedule: "{expr}"')
    assert "keys.payments.schedule" in _error(text)


def test_one_problem_is_one_line() -> None:
    """A single problem is reported as one line, starting with the file and line."""
    message = _error(GOOD.replace('schedule: "0 3 * * MON"', 'schedule: "0 0 31 2 *"'))
    assert message == "r.yaml:25: keys.payments.schedule: '0 0 31 2 *' never fires (no date matches it)"


def test_not_utf8(tmp_path: Path) -> None:
    """A rotation file that is not UTF-8 is a ConfigError, not an unexpected crash."""
    path = tmp_path / "r.yaml"
    path.write_bytes(b"version: 1\nkeys: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_rotation_file(path)
