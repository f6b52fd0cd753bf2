"""Idempotency keys (IETF httpapi Idempotency-Key draft)."""
