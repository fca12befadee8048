"""The file backend for the store contract suite (see tests/store_harness.py)."""
