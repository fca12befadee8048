"""rotator: rotate third-party API keys as code.

Mint at the vendor, roll out to every secret store, verify that consumers have
moved to the new key, and only then revoke the old one.
"""

__version__ = "0.1.0"
