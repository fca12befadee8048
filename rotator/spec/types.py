"""The building blocks of a rotation file's models: the strict base model, names, safe text,
endpoints and the two ways of pointing at a credential (an environment variable, a declared key)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from rotator.net import tls_problem


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


# --------------------------------------------------------------------------- names and text

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
"""A key or issuer name: it is printed on its own line by plan, status and the journal (and
kept in an IAM tag for aws_iam keys, which takes these characters too)."""

UNSAFE_CHARS = r"\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
SAFE_TEXT_PATTERN = f"^[^{UNSAFE_CHARS}]*$"
Text = Annotated[str, Field(pattern=SAFE_TEXT_PATTERN)]
"""A path, an id or a URL that ends up in output: no control or bidirectional-override characters."""


def _require_tls(url: str) -> str:
    problem = tls_problem(url)
    if problem:
        raise ValueError(problem)
    return url


Url = Annotated[str, Field(min_length=1, pattern=SAFE_TEXT_PATTERN), AfterValidator(_require_tls)]
"""An endpoint: https, or plain http to a loopback address only (the rule in rotator.net)."""

PATTERN_MESSAGES = {
    NAME_PATTERN: "a name is 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit",
    SAFE_TEXT_PATTERN: "control characters and bidirectional overrides are not allowed",
}


# --------------------------------------------------------------------------- credentials


class EnvRef(_Model):
    """A value taken from an environment variable of the rotator's process."""

    env: str = Field(min_length=1)


class KeyRef(_Model):
    """A value taken from another declared key's current version (the rotator's own key)."""

    key: Name


Credential = EnvRef | KeyRef
