"""The built-in plugins: rotator's own issuers and stores, registered through the same entry
points as any other distribution's (``rotator.issuers``, ``rotator.stores`` in pyproject.toml).

These modules hold the config models only; each factory imports its implementation (a vendor
client in :mod:`rotator.vendors`, a store in :mod:`providers`) when called.
"""
