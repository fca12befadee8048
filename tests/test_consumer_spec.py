"""The rotation file's ``consumers:`` and write-only targets: how they are declared and the
mistakes the loader names."""

from __future__ import annotations

import pytest

from rotator.errors import ConfigError
from rotator.spec import parse_rotation_file

BASE = """version: 1
issuers:
  a: {type: adjudon, base_url: "http://127.0.0.1:9", credential: {env: X}}
keys:
  k:
    issuer: a
    kind: workspace
    targets:
      - {type: file, path: k.env, format: dotenv, field: K}
      - {type: github, repository: acme/pay, secret_name: K}
    consumers:
      - {type: command, argv: [systemctl, restart, pay]}
      - {type: webhook, url: "https://deploy.internal/hooks/rotated?token=abc", secret: {env: HOOK}}
      - {type: kubernetes, namespace: pay, name: api, external_secret: pay-es}
      - {type: ecs, cluster: prod, service: pay, region: eu-central-1}
"""


def test_consumers_and_write_only_targets_parse_with_stable_labels() -> None:
    key = parse_rotation_file(BASE).keys["k"]
    assert [c.label() for c in key.consumers] == [
        "command:systemctl restart pay",
        "webhook:deploy.internal/hooks/rotated",  # never the query: it may carry a token
        "kubernetes:pay/Deployment/api",
        "ecs:prod/pay",
    ]
    assert [t.type for t in key.readable_targets()] == ["file"]
    assert [t.type for t in key.write_only_targets()] == ["github"]


def test_consumers_are_optional() -> None:
    text = BASE.split("    consumers:", maxsplit=1)[0]
    assert parse_rotation_file(text).keys["k"].consumers == []


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda t: t.replace("      - {type: file, path: k.env, format: dotenv, field: K}\n", ""),
            "rotations.yaml:5: keys.k: targets: every target is write-only (github); add one readable target",
        ),
        (
            lambda t: t.replace("type: ecs", "type: ecz"),
            "rotations.yaml:15: keys.k.consumers.3: Input tag 'ecz' found using 'type' does not match any of "
            "the expected tags: 'command', 'ecs', 'kubernetes', 'webhook'",
        ),
        (
            lambda t: t + "      - {type: command, argv: [systemctl, restart, pay]}\n",
            "rotations.yaml:5: keys.k: consumers: command:systemctl restart pay is listed twice",
        ),
        (
            lambda t: t.replace("{type: command, argv: [systemctl, restart, pay]}", "{argv: [x]}"),
            "rotations.yaml:12: keys.k.consumers.0: Unable to extract tag using discriminator 'type'",
        ),
        (
            lambda t: t.replace("argv: [systemctl, restart, pay]", "argv: []"),
            "rotations.yaml:12: keys.k.consumers.0.argv: List should have at least 1 item",
        ),
        (
            lambda t: t.replace('"https://deploy.internal', '"http://deploy.internal'),
            "rotations.yaml:13: keys.k.consumers.1.url:",
        ),
    ],
    ids=["only-write-only", "unknown-type", "twice", "no-type", "empty-argv", "plain-http"],
)
def test_consumer_mistakes_are_named_with_their_line(edit, expected) -> None:
    with pytest.raises(ConfigError) as err:
        parse_rotation_file(edit(BASE))
    assert str(err.value).startswith(expected), str(err.value)


def test_long_commands_alike_at_the_start_keep_distinct_labels() -> None:
    long = "x" * 90
    text = BASE.replace(
        "      - {type: command, argv: [systemctl, restart, pay]}",
        f"      - {{type: command, argv: [run, {long}, a]}}\n      - {{type: command, argv: [run, {long}, b]}}",
    )
    labels = [c.label() for c in parse_rotation_file(text).keys["k"].consumers[:2]]
    assert labels[0] != labels[1]
    assert all(len(label) <= 90 and label.startswith("command:run xxx") for label in labels)
