"""Per-route policies, each with one ``handle(ctx, call_next)`` method."""
