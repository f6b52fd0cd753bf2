"""The harness's one exception."""


class BenchError(RuntimeError):
    """A variant could not be measured (a server did not start, a probe failed)."""
