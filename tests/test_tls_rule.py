"""One endpoint rule (TLS unless loopback), worded once, applied by every part that connects.

Each part is given an endpoint built in code past validate (``model_copy``), which is
what the parts check again for.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from providers.aws import open_store as open_aws
from providers.vault import open_store as open_vault
from rotator.engine.lease_dynamodb import DynamoDBLease
from rotator.errors import ConfigError
from rotator.net import RULE, tls_problem
from rotator.spec import AwsTarget, DynamoDBLeaseSpec, VaultTarget
from rotator.vendors._http import check_base_url

PASSWORD = "hunter2-CANARY"
PLAIN = f"http://user:{PASSWORD}@api.example.com:8200"


def _refusal(call: object) -> str:
    assert callable(call)
    with pytest.raises(ConfigError) as info:
        call()
    return str(info.value)


def test_tls_problem_words_the_rule_without_the_password() -> None:
    assert tls_problem(PLAIN) == f"'http://api.example.com:8200': {RULE}"
    assert tls_problem("https://api.example.com") is None
    assert tls_problem("http://[::1]:1") is None


@pytest.mark.parametrize(
    "refuse",
    [
        lambda: check_base_url("http://api.example.com", "adjudon-prod"),
        lambda: open_vault(
            VaultTarget(type="vault", url="https://v", path="x").model_copy(update={"url": PLAIN}),
            base_dir=Path("."),
        ),
        lambda: open_aws(
            AwsTarget(type="aws", secret_id="s").model_copy(update={"endpoint_url": PLAIN}),
            base_dir=Path("."),
        ),
        lambda: DynamoDBLease(
            DynamoDBLeaseSpec(type="dynamodb", table="leases").model_copy(update={"endpoint_url": PLAIN})
        ),
    ],
    ids=["vendor-base-url", "vault", "secrets-manager", "dynamodb-lease"],
)
def test_every_part_refuses_plain_http_in_the_rules_words(refuse: object) -> None:
    message = _refusal(refuse)
    assert message.endswith(RULE)
    assert PASSWORD not in message


@pytest.mark.parametrize("url", [f"ftp://user:{PASSWORD}@api.example.com", f"https://user:{PASSWORD}@"])
def test_a_vendor_url_that_is_no_http_url_is_named_without_its_password(url: str) -> None:
    message = _refusal(lambda: check_base_url(url, "adjudon-prod"))
    assert "is not an http(s) URL" in message and PASSWORD not in message
