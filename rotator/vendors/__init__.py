"""Vendor clients behind :class:`rotator.abc.Issuer`.

* :class:`AdjudonIssuer` - an overlap vendor: two keys per scope (workspace or agent).
* :class:`AdjutorIssuer` - a reset vendor: one key per app, a reset revokes it.
* ``aws_iam.AwsIamIssuer`` - the access keys of one IAM user, over boto3 (imported on use).

The first two speak HTTP through :class:`rotator.vendors._http.VendorHTTP`, which owns
TLS checks, error translation and bounded retries (:class:`RetryPolicy`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from rotator.errors import VendorOutcomeUnknown
from rotator.vendors._http import RetryPolicy
from rotator.vendors.adjudon import AdjudonIssuer, ChainReport, ChainStatus
from rotator.vendors.adjutor import AdjutorIssuer

if TYPE_CHECKING:  # the rotation file's models are the caller's; importing them here is not needed
    import httpx

    from rotator.abc import Issuer
    from rotator.secret import Secret
    from rotator.spec import IssuerSpec, KeySpec

__all__ = [
    "AdjudonIssuer",
    "AdjutorIssuer",
    "ChainReport",
    "ChainStatus",
    "RetryPolicy",
    "VendorOutcomeUnknown",
    "make_issuer",
]


def make_issuer(
    spec: IssuerSpec,
    key: KeySpec,
    *,
    credential: Callable[[], Secret],
    http: httpx.Client | None = None,
    retry: RetryPolicy | None = None,
) -> Issuer:
    """The issuer for ``key``, bound to its scope; named after ``key.issuer``: built by the
    factory the issuer's plugin model carries (:meth:`rotator.spec.IssuerModel.make_issuer`).

    ``credential`` is called for every request: the workspace key for Adjudon,
    the app's current key for Adjútor. IAM uses the SDK's credential chain instead.
    """
    return spec.make_issuer(key, credential=credential, http=http, retry=retry)
