"""The dashboard in headless Chromium against a running gateway under a little load.

The sample services serve a proxy route and a fan-out route with one backend that is
always too slow for the budget; a background task sends requests to both every 20 ms
while Chromium opens the page with the token in its fragment. The figures the page
shows are then read from its DOM (their ``data-*`` attributes), and the page's own
arithmetic is checked against gateway/admin/figures.py on two /admin/stats answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from examples.services import start_services
from gateway.admin.figures import window_figures
from tests.browser import Page, headless_page

pytestmark = pytest.mark.timeout(60)

TOKEN = "browser-test-admin-token"
BUDGET = 0.05

#: Every figure cell the page shows: which route (and backend), which figure, the
#: unrounded value and the text.
CELLS = """[...document.querySelectorAll("td[data-figure]")].map((td) => ({
  route: td.dataset.route, backend: td.dataset.backend || null,
  figure: td.dataset.figure, value: td.dataset.value, text: td.textContent}))"""


def routes(users: str, orders: str, recommendations: str) -> str:
    return f"""
    routes:
      - name: user
        path: /v1/users/{{id}}
        proxy: {{url: '{users}', path: '/users/{{id}}', timeout: 2s}}
      - name: dash
        path: /v1/dash/{{id}}
        fanout:
          budget: 50ms
          backends:
            user: {{url: '{users}/users/{{id}}', required: true}}
            orders: {{url: '{orders}/orders?user={{id}}'}}
            recommendations:
              url: '{recommendations}/recommendations?user={{id}}&delay=500ms'
              fallback: {{items: []}}
    """


def admin_top(tmp_path: Path) -> str:
    (tmp_path / "admin-token").write_text(TOKEN + "\n")
    return textwrap.dedent(f"""
    auth:
      sqlite_path: {tmp_path / "credentials.db"}
      pepper_file: {tmp_path / "pepper.json"}
    admin:
      enabled: true
      listen: {{host: 127.0.0.1, port: 0}}
      token_env: GATEWAY_TEST_DASHBOARD_TOKEN_NEVER_SET
      token_file: {tmp_path / "admin-token"}
    """)


@contextlib.asynccontextmanager
async def load(http: aiohttp.ClientSession, urls: list[str]) -> AsyncIterator[None]:
    """A request to each of ``urls`` every 20 ms, each on its own task (a fan-out
    request takes its whole 50 ms budget)."""
    pending: set[asyncio.Task[None]] = set()

    async def one(url: str) -> None:
        async with http.get(url) as response:
            await response.read()

    async def send() -> None:
        for tick in itertools.count():
            for url in urls:
                task = asyncio.create_task(one(url.format(id=tick % 50)))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.sleep(0.02)

    sender = asyncio.create_task(send())
    try:
        yield
    finally:
        sender.cancel()
        for task in [sender, *pending]:
            task.cancel()
        await asyncio.gather(sender, *pending, return_exceptions=True)


async def cells(page: Page) -> dict[tuple[str, str | None, str], dict[str, Any]]:
    found = await page.evaluate(CELLS)
    return {(cell["route"], cell["backend"], cell["figure"]): cell for cell in found}


async def test_the_dashboard_shows_live_figures(
    start_gateway: Any, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    services = await start_services(
        "127.0.0.1", {"users": 0, "orders": 0, "recommendations": 0}, seed=1
    )
    try:
        gw = await start_gateway(
            routes(services.url("users"), services.url("orders"), services.url("recommendations")),
            top=admin_top(tmp_path),
        )
        admin = f"http://127.0.0.1:{gw.gateway.admin_port}"
        urls = [gw.url + "/v1/users/{id}", gw.url + "/v1/dash/{id}"]
        async with (
            load(http, urls),
            headless_page(f"{admin}/#token={TOKEN}", tmp_path / "chromium") as page,
        ):
            await check_figures(page)
            await check_arithmetic(page, http, admin)
            await check_a_wrong_token(page, admin)
    finally:
        await services.close()


async def check_figures(page: Page) -> None:
    # The first poll shows the routes; the second, 2 s later, the first window.
    await page.wait_for(
        """document.querySelector('td[data-route="dash"][data-figure="p99"]')
             ?.dataset.value""",
        seconds=15,
    )
    # The token left the address bar at once, and is kept for the tab only.
    assert await page.evaluate("location.hash") == ""
    assert await page.evaluate("sessionStorage.getItem('gateway-admin-token')") == TOKEN
    headings = await page.evaluate(
        "[...document.querySelectorAll('section.route h2')].map((h) => h.textContent)"
    )
    assert headings == ["user", "dash"]

    # The first window saw Chromium start beside the gateway: read the next one.
    first = await page.evaluate("document.getElementById('updated').textContent")
    await page.wait_for(
        f"document.getElementById('updated').textContent !== {orjson.dumps(first).decode()}",
        seconds=10,
    )
    shown = await cells(page)
    for route in ("user", "dash"):
        rate = shown[(route, None, "rate")]
        assert float(rate["value"]) > 5, rate  # about 50/s; a slow CI box gets fewer
        assert rate["text"].endswith("/s")
        for quantile in ("p50", "p99"):
            assert float(shown[(route, None, quantile)]["value"]) > 0
            assert shown[(route, None, quantile)]["text"].endswith(" ms")
    # Each fan-out request waits for its slow backend until the budget runs out, not
    # for the 500 ms the backend takes. (The p99 is looser than the median: the test
    # process is the gateway, the services and the load at once, and Chromium starts
    # beside it.)
    p50 = float(shown[("dash", None, "p50")]["value"])
    p99 = float(shown[("dash", None, "p99")]["value"])
    assert 0.8 * BUDGET <= p50 <= 1.5 * BUDGET, p50
    assert 0.8 * BUDGET <= p99 <= 0.25, p99
    # The bar against the budget is red exactly when the figure is over it.
    over = await page.evaluate(
        """[...document.querySelectorAll('section.route[data-route="dash"] .bar')]
             .map((bar) => bar.querySelector('.fill')?.classList.contains('over'))"""
    )
    assert over == [p50 > BUDGET, p99 > BUDGET]
    assert float(shown[("dash", None, "partial_share")]["value"]) == pytest.approx(1.0, abs=0.1)
    slow = shown[("dash", "recommendations", "timeout_share")]
    assert float(slow["value"]) == pytest.approx(1.0, abs=0.1)
    assert slow["text"].endswith(" %")
    # Fast, but on a busy machine one call may miss the budget too.
    assert float(shown[("dash", "user", "timeout_share")]["value"]) < 0.1
    assert float(shown[("user", "upstream", "p99")]["value"]) > 0
    assert float(shown[("user", "upstream", "timeout_share")]["value"]) == 0.0
    # No traffic through a cache in the window: a dash, not a zero.
    cache = shown[("user", None, "cache_hit_ratio")]
    assert (cache["value"], cache["text"]) == ("", "\u2014")
    assert await page.evaluate("document.getElementById('updated').textContent") != "\u2014"


async def check_arithmetic(page: Page, http: aiohttp.ClientSession, admin: str) -> None:
    """The page's windowFigures on two answers equals figures.py's on the same two."""
    answers = []
    for _ in range(2):
        async with http.get(
            admin + "/admin/stats", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as response:
            answers.append(await response.json())
        await asyncio.sleep(0.5)
    previous, current = (orjson.dumps(answer).decode() for answer in answers)
    in_page = await page.evaluate(f"gatewayDashboard.windowFigures({previous}, {current})")
    in_python = window_figures(answers[0], answers[1])
    assert [route["name"] for route in in_page] == ["user", "dash"]
    assert in_page == in_python


async def check_a_wrong_token(page: Page, admin: str) -> None:
    await page.navigate("about:blank")
    await page.navigate(f"{admin}/#token=wrong")
    status = await page.wait_for(
        # Null-safe: the page may still be loading.
        "document.getElementById('login')?.hidden === false"
        " && document.getElementById('status').textContent",
        seconds=10,
    )
    assert "401" in status
    # The refused token is forgotten, and no figures are left on the page.
    assert await page.evaluate("sessionStorage.getItem('gateway-admin-token')") is None
    assert await page.evaluate("document.querySelectorAll('section.route').length") == 0
