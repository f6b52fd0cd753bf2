"""``GET /``: the dashboard, one self-contained page (inline CSS and JS, nothing fetched
from anywhere but ``/admin/stats`` on this listener).

The page is served without the token, like a login page: it holds no data. Its script
takes the token from the URL fragment (``/#token=...``: a fragment is never sent to
the server, so the token is in no log), or asks for it, and sends it as a bearer token
to ``/admin/stats``.

The page is put together once, at import, from the three files in ``static/`` (kept
apart so that each can be read and edited as what it is). Its Content-Security-Policy
allows exactly that one script and that one style sheet, by hash, and connections to
this origin only: a route name that slipped into the markup could not run.
"""

from __future__ import annotations

import base64
import hashlib
from importlib.resources import files

from aiohttp import web

_STATIC = files(__package__).joinpath("static")


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _build() -> tuple[bytes, str]:
    style = _STATIC.joinpath("dashboard.css").read_text("utf-8")
    script = _STATIC.joinpath("dashboard.js").read_text("utf-8")
    # Either would end its element early.
    assert "</script" not in script.lower()
    assert "</style" not in style.lower()
    template = _STATIC.joinpath("dashboard.html").read_text("utf-8")
    page = template.replace("{{style}}", style).replace("{{script}}", script)
    policy = "; ".join(
        (
            "default-src 'none'",
            f"script-src {_sha256(script)}",
            f"style-src {_sha256(style)}",
            "connect-src 'self'",
            "img-src data:",  # the empty favicon, so the browser does not ask for one
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )
    return page.encode(), policy


_PAGE, _POLICY = _build()

_HEADERS = {
    "Content-Security-Policy": _POLICY,
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


async def dashboard(request: web.Request) -> web.Response:
    return web.Response(body=_PAGE, content_type="text/html", charset="utf-8", headers=_HEADERS)
