"""Calling upstreams: pools, the streaming proxy, and deadline-budgeted fan-out."""
