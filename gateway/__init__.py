"""An asyncio API gateway: route YAML, streaming proxy, deadline-budgeted fan-out."""

__version__ = "0.1.0"
