"""What the admin API sees of the gateway it runs in.

The admin handlers read the gateway's state when a request comes, not when the admin
app is built: a reload swaps the Runtime (and may start the auth services), and the
admin API must describe the config that serves now.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    # Typing only: the server module builds the admin app, so it cannot be imported here.
    from ..server import Gateway

GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway")
