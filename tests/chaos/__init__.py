"""The chaos harness (``python -m tests.chaos.harness``) and its parts: fault proxy, servers,
consumers, the world, the invariant checks and the report."""
