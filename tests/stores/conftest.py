"""Fixtures for the credential store tests: the shared Redis server lives in
``tests/redis_server.py`` so that other test folders can import it too."""

from tests.redis_server import private_redis_server, redis_server, redis_url

__all__ = ["private_redis_server", "redis_server", "redis_url"]
