"""Shared state behind small protocols: SQLite (one node) and Redis (several nodes)."""
