"""``GET /metrics`` for the admin listener: Prometheus text (or OpenMetrics on request).

The gateway hands it to the admin app (``admin_app(..., metrics=metrics_handler(self))``
in ``Gateway.start``); the admin token check applies as to every admin route
(Prometheus sends the token with ``authorization: {credentials_file: ...}`` in its
scrape config).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from .collector import Snapshot, SnapshotCollector, take_snapshot

if TYPE_CHECKING:
    from ..server import Gateway

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def render(snapshot: Snapshot, accept: str) -> tuple[bytes, str]:
    """The exposition of ``snapshot`` and the process's own figures (CPU, memory, file
    descriptors, GC), in the format ``accept`` asks for; and its content type.

    A registry per scrape, not prometheus_client's global one: two gateways in one
    process (the tests) must not report each other's figures.
    """
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(snapshot))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    encode, content_type = choose_encoder(accept)
    return encode(registry), content_type


def metrics_handler(state: Gateway) -> Handler:
    async def metrics(request: web.Request) -> web.Response:
        snapshot = take_snapshot(state)
        body, content_type = await asyncio.to_thread(
            render, snapshot, request.headers.get("Accept", "")
        )
        return web.Response(body=body, headers={"Content-Type": content_type})

    return metrics
