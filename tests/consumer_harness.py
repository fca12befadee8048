"""What each consumer and write-only target backend gives the contract suites
(``tests/test_consumer_contract.py``, ``tests/test_write_only_contract.py``).

Every consumer type (command, webhook, kubernetes, ecs) has a module in
``tests/harnesses/`` defining a fixture ``consumer_<type>_harness``; every write-only target
(lambda_env, github) one named ``write_only_<type>_harness``. The suites run unchanged
against all of them, as the store contract suite does for stores.
"""

from __future__ import annotations

from typing import Protocol

from rotator.abc import Consumer, RollEvent, WriteOnlyTarget
from rotator.spec.models import ConsumerModel


class ConsumerHarness(Protocol):
    name: str
    """The consumer type: command, webhook, kubernetes or ecs."""

    def make_consumer(self) -> Consumer:
        """A consumer of a fresh workload (a unique name) that rolls successfully: the
        harness plays whatever the real system would do meanwhile (the rollout completing,
        External Secrets refreshing, the receiver answering 2xx)."""
        ...

    def declaration(self, consumer: Consumer) -> ConsumerModel:
        """The rotation file's declaration ``consumer`` was made from (its factory built it):
        the suite checks the name is its ``label()`` and that a fresh parse gives the same one."""
        ...

    def rolls(self, consumer: Consumer) -> list[RollEvent]:
        """What the workload behind ``consumer`` saw, one entry per completed roll, as the
        event it was given (a restart annotation, a deployment, a verified webhook delivery,
        a command's environment), in order."""
        ...

    def failing_consumer(self) -> Consumer:
        """A consumer whose roll fails at once for a reason a person must fix (the workload
        does not exist, access denied, a command that exits 1, a hook answering 4xx)."""
        ...

    def stuck_consumer(self, timeout_s: float) -> Consumer:
        """A consumer whose roll starts but never completes (a rollout that never finishes, a
        hook that never answers, a command that sleeps), with ``timeout`` ``timeout_s``."""
        ...


class WriteOnlyHarness(Protocol):
    name: str
    """The target type: lambda_env or github."""

    def make_target(self) -> WriteOnlyTarget:
        """A target of a fresh function or repository secret that exists (as a person would
        have made it) and may be written."""
        ...

    def read_back(self, target: WriteOnlyTarget) -> str | None:
        """The value the target holds now, as only its system can see it (the function's
        configuration; the fake GitHub opening the sealed box with its private key)."""
        ...

    def other_content(self, target: WriteOnlyTarget) -> dict[str, str]:
        """What else the target's system holds beside our value that a write must keep (the
        function's other variables; the repository's other secrets, by name and value)."""
        ...

    def denied_target(self, target: WriteOnlyTarget) -> WriteOnlyTarget:
        """A target for the same place whose credentials may not write it."""
        ...

    def missing_target(self) -> WriteOnlyTarget:
        """A target naming a function or repository that does not exist."""
        ...
