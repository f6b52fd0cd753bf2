"""The Redis fixtures come from ``tests/conftest.py`` (shared by every test folder)."""
