"""What each issuer gives the issuer contract suite (``tests/test_issuer_contract.py``).

A harness is a pytest fixture named ``<vendor>_issuer_harness`` returning an object of this
shape, over the vendor's real HTTP API (an emulator on loopback). A plugin's tests bring their
own harness and run the suite unchanged (see ``tests/test_plugin_example.py``).
"""

from __future__ import annotations

from typing import Protocol

from rotator.abc import Issuer


class IssuerHarness(Protocol):
    name: str
    """The issuer type: adjudon, example, ..."""

    def make_issuer(self) -> Issuer:
        """An issuer bound to a fresh scope that holds no key yet."""
        ...

    def denied_issuer(self) -> Issuer:
        """An issuer for the same vendor whose management credential the vendor refuses."""
        ...

    def use(self, value: str) -> bool:
        """A consumer's request with key ``value``; True when the vendor accepted it."""
        ...
