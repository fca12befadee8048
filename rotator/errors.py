"""The rotator's exceptions, drawn once.

    RotatorError
    ├── ConfigError                 the rotation file or settings are wrong
    ├── StoreError                  a secret store refused or failed (names store + secret)
    │   ├── StoreNotFound           the secret (or its version) does not exist
    │   ├── StoreAccessDenied       the credentials may not do this
    │   ├── StoreConflict           another writer changed the secret under us
    │   └── StoreUnavailable*       the store could not be reached (transient)
    ├── StoreFormatError            the stored value is not what the target says (e.g. not JSON)
    ├── VendorError                 the vendor answered with an error
    │   ├── VendorAuthError         401/403: who are you / not allowed. Never retried
    │   ├── KeyLimitReached         409: two keys are already active in the scope
    │   ├── VendorNotFound          404
    │   ├── VendorRejected          422 and other 4xx
    │   ├── VendorProtocolError     the answer is not what vendor-api.md promises
    │   └── VendorUnavailable*      429, 5xx, timeouts (transient)
    │       └── VendorOutcomeUnknown  a mint or reset failed after it may have reached the vendor
    ├── ConsumerError               a consumer could not be rolled (names the consumer)
    │   ├── ConsumerTimeout         its restart or redeploy did not finish in its timeout
    │   └── ConsumerUnavailable*    its API could not be reached (transient)
    ├── VerificationFailed          a check before revoke did not pass
    ├── Held                        needs a person; never resolved by guessing
    └── LeaseBusy                   another runner holds this key's lease

Classes marked * also inherit :class:`Transient`: a retry may repeat them.
No message ever contains a raw key: call sites name keys by id, prefix and
fingerprint only.
"""

from __future__ import annotations


class RotatorError(Exception):
    """Base of every error the rotator raises on purpose."""


class Transient(RotatorError):
    """Mixin: the operation may succeed if repeated later."""

    retry_after: float | None = None


class ConfigError(RotatorError):
    """The rotation file or the process settings are invalid."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class StoreError(RotatorError):
    """A secret store operation failed. ``store`` names the target, never the value."""

    def __init__(self, store: str, message: str) -> None:
        super().__init__(f"{store}: {message}")
        self.store = store


class StoreNotFound(StoreError):
    """The secret, or the version asked for, does not exist."""


class StoreAccessDenied(StoreError):
    """The store's credentials are not allowed to do this."""


class StoreConflict(StoreError):
    """Another writer changed the secret between our read and our write."""


class StoreUnavailable(StoreError, Transient):
    """The store could not be reached or answered with a server error."""


class StoreFormatError(StoreError):
    """The stored value does not have the shape the target declares."""


class VendorError(RotatorError):
    """The vendor answered with an error. ``status`` and ``code`` come from its answer."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class VendorAuthError(VendorError):
    """401 or 403: the credential is missing, unknown, revoked or not allowed."""


class KeyLimitReached(VendorError):
    """409 KEY_LIMIT_REACHED: a rotation is already in flight in this scope."""


class VendorNotFound(VendorError):
    """404: the key or app is unknown."""


class VendorRejected(VendorError):
    """422 and other client errors that a retry will not fix."""


class VendorProtocolError(VendorError):
    """The vendor answered something vendor-api.md does not allow (garbage, bad key format)."""


class VendorUnavailable(VendorError, Transient):
    """429, 5xx or a network failure: retried with backoff, honouring Retry-After."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after


class VendorOutcomeUnknown(VendorUnavailable):
    """A non-idempotent request (mint, reset) failed after it may have reached the vendor.

    Never retried: a retry could mint twice. For an overlap vendor the next pass finds the
    orphan, if any; for a reset vendor the old key may already be revoked.
    """


class ConsumerError(RotatorError):
    """Rolling a consumer failed. ``consumer`` names it (its label), never a key's value."""

    def __init__(self, consumer: str, message: str) -> None:
        super().__init__(f"{consumer}: {message}")
        self.consumer = consumer


class ConsumerTimeout(ConsumerError):
    """The consumer's restart or redeploy did not finish within its ``timeout``."""


class ConsumerUnavailable(ConsumerError, Transient):
    """The consumer's API (or the command's host) could not be reached; a retry may work."""


class VerificationFailed(RotatorError):
    """A check that must pass before a revoke did not pass."""


class Held(RotatorError):
    """The key needs a person. ``reason`` says why and what to do."""


class LeaseBusy(RotatorError):
    """Another runner holds the lease on this key."""

    def __init__(self, key: str, holder: str) -> None:
        super().__init__(f"key {key!r} is being worked on by {holder}")
        self.key = key
        self.holder = holder
