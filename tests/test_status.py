"""The status view names keys by the vendor's prefix and fingerprints, never by value."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from rotator.abc import Capabilities, Stamp, StoredVersion, TargetState, VendorKey
from rotator.engine.decide import decide
from rotator.engine.model import Observation, TargetObs
from rotator.engine.status import describe
from rotator.secret import Secret
from rotator.spec import VerifyPolicy

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def test_prefix_comes_from_the_vendor_key() -> None:
    """A stored JSON value (an IAM key pair) shows as its access key id, and no secret is in the view."""
    secret_half = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"
    value = Secret(json.dumps({"AccessKeyId": "AKIAIOSFODNN7EXAMPLE", "SecretAccessKey": secret_half}))
    key = VendorKey("AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE", "rotator:ci:a", "active", T0)
    stored = StoredVersion("1", value, Stamp(key.id, value.fingerprint, "a", T0))
    obs = Observation(
        key="ci",
        now=T0 + timedelta(days=1),
        vendor=(key,),
        targets=(TargetObs("aws:ci", TargetState(stored, None)),),
        capabilities=Capabilities(2, True, 20),
        strategy="overlap",
        policy=VerifyPolicy(),
        max_age=timedelta(days=30),
        owners={value.fingerprint: (key.id,)},
    )
    view = describe(obs, decide(obs))
    assert view["targets"][0]["current"]["prefix"] == "AKIAIOSFODNN7EXAMPLE"
    assert view["targets"][0]["current"]["truncated"] is True
    assert view["targets"][0]["current"]["fingerprint"] == value.fingerprint
    assert view["in_sync"] is True and view["phase"] == "current"
    assert secret_half not in json.dumps(view)
