"""``gateway bench`` against a real gateway in front of the sample services, one of them
slow: the report must name it, in the table, the HTML and the JSON; and the command's
own process: a short run, and Ctrl-C in the middle of a long one."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from examples.services import ServiceGroup, start_services
from gateway.budget.command import BenchOptions, measure, write_outputs
from gateway.loadgen import Sample, run_open_loop
from tests.conftest import ROOT, GatewayFactory

pytestmark = pytest.mark.timeout(30)

BUDGET_MS = 80
SLOW = "recommendations"


@pytest.fixture
async def services() -> AsyncIterator[ServiceGroup]:
    group = await start_services(
        "127.0.0.1", {"users": 0, "orders": 0, "recommendations": 0}, seed=1
    )
    try:
        yield group
    finally:
        await group.close()


@pytest.fixture
async def dashboard(services: ServiceGroup, start_gateway: GatewayFactory) -> str:
    """A three-way fan-out URL whose recommendations part always misses the budget.

    400 ms is far past the budget, and short enough for the services to stop quickly:
    their handlers run on after the gateway gives up, and shutdown waits for them.
    """
    gateway = await start_gateway(
        f"""
        routes:
          - name: dash
            path: /v1/dash/{{id}}
            fanout:
              budget: {BUDGET_MS}ms
              backends:
                user: {{url: "{services.url("users")}/users/{{id}}", required: true}}
                orders: {{url: "{services.url("orders")}/orders?user={{id}}"}}
                {SLOW}:
                  url: "{services.url(SLOW)}/recommendations?user={{id}}&delay=400ms"
                  fallback: {{items: []}}
        """
    )
    return f"{gateway.url}/v1/dash/42"


class Charts(HTMLParser):
    """The ids of the page's <svg> elements and the backends their bars are for."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.bars: dict[str, set[str]] = {}
        self._current = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "svg":
            self._current = attributes.get("id") or ""
            self.ids.append(self._current)
        elif tag == "rect":
            name = attributes.get("data-backend") or attributes.get("data-name")
            if name:
                self.bars.setdefault(self._current, set()).add(name)


async def test_the_report_names_the_slow_backend(dashboard: str, tmp_path: Path) -> None:
    options = BenchOptions(
        url=dashboard,
        rate=100,
        duration=1.5,
        budget=BUDGET_MS / 1000,
        report=tmp_path / "report.html",
        json=tmp_path / "figures.json",
    )
    measured = await measure(options)
    figures = measured.figures

    assert figures.requests == 150
    assert figures.responses == 150
    assert figures.statuses.get("200", 0) >= 145  # a loaded machine may miss a required part
    assert figures.partial_share >= 0.95
    assert figures.partial_parts.get(SLOW, 0) == figures.partial
    backends = {backend.name: backend for backend in figures.backends}
    assert set(backends) == {"user", "orders", SLOW}
    slow = backends[SLOW]
    # Cut off at the budget, never answered: every one of them a timeout (also when
    # the budget's timer fired a hair before the gateway's clock reached the deadline).
    assert slow.outcomes == {"timeout": 150}
    assert BUDGET_MS * 0.9 <= slow.latency.p50 <= BUDGET_MS * 1.25
    assert slow.latency.p99 >= BUDGET_MS * 0.9
    assert backends["user"].latency.p50 < BUDGET_MS / 2
    assert figures.over_budget_share >= 0.5
    assert figures.spent_by == SLOW
    # On a loaded machine a fast backend's answer can now and then come in after the
    # slow one was cut off: the slow one still ends last in nearly every late answer.
    assert slow.spent_budget >= figures.over_budget * 0.95
    assert backends["user"].spent_budget + backends["orders"].spent_budget <= (
        figures.over_budget - slow.spent_budget
    )
    assert figures.median is not None
    assert figures.slowest is not None
    assert figures.slowest.latency_ms >= figures.median.latency_ms >= BUDGET_MS * 0.9

    write_outputs(options, measured)
    charts = Charts()
    charts.feed((tmp_path / "report.html").read_text())
    assert set(charts.ids) == {
        "histogram",
        "backend-percentiles",
        "waterfall-median",
        "waterfall-slowest",
    }
    assert {"user", "orders", SLOW} <= charts.bars["backend-percentiles"]
    assert {"user", "orders", SLOW} <= charts.bars["waterfall-median"]
    assert {"user", "orders", SLOW} <= charts.bars["waterfall-slowest"]

    document = orjson.loads((tmp_path / "figures.json").read_bytes())
    assert document["spent_by"] == SLOW
    assert document["requests"] == len(document["samples"]) == 150
    assert figures.latency is not None
    assert document["latency"]["p99"] == pytest.approx(figures.latency.p99)
    assert [b["name"] for b in document["backends"]] == ["user", "orders", SLOW]
    assert document["samples"][0]["server_timing"].startswith("user;dur=")


async def test_a_stop_ends_the_sending_and_waits_for_requests_in_flight(aiohttp_server) -> None:
    """The loadgen side of Ctrl-C: after ``stop`` nothing more is sent, and every request
    sent is answered and counted, the slow ones in flight included."""
    answered: list[Sample] = []

    async def slowish(request: web.Request) -> web.Response:
        await asyncio.sleep(0.2)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", slowish)
    server = await aiohttp_server(app)
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.5, stop.set)
    result = await run_open_loop(
        str(server.make_url("/")), rate=50, duration=10, stop=stop, on_sample=answered.append
    )
    assert result.stopped
    assert 15 <= len(result.samples) <= 35  # about 0.5 s of 50/s, not 10 s
    assert all(sample.status == 200 for sample in result.samples)
    assert len(answered) == len(result.samples)
    # The last ones were in flight at the stop and were waited for, not dropped.
    assert max(sample.latency_s for sample in result.samples) >= 0.2


async def test_abandoning_keeps_what_was_answered(aiohttp_server) -> None:
    """A second Ctrl-C: requests in flight are given up on and counted as abandoned."""

    async def hangs(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", hangs)
    server = await aiohttp_server(app)
    stop, abandon = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, stop.set)
    loop.call_later(0.5, abandon.set)
    options = BenchOptions(url=str(server.make_url("/")), rate=50, duration=10)
    measured = await asyncio.wait_for(measure(options, stop=stop, abandon=abandon), 5)
    figures = measured.figures
    assert figures.stopped
    assert figures.requests == 0  # nothing was answered
    assert 10 <= figures.abandoned <= 25  # about 0.3 s of 50/s


async def bench_process(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "bench",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )


async def reap(process: asyncio.subprocess.Process) -> None:
    """A command a failed test left running must not outlive the test."""
    if process.returncode is None:
        process.kill()
        await process.wait()


async def test_the_command_prints_the_table_and_writes_its_files(
    dashboard: str, tmp_path: Path
) -> None:
    report, figures = tmp_path / "r.html", tmp_path / "f.json"
    process = await bench_process(
        dashboard,
        "--rate",
        "40",
        "--duration",
        "500ms",
        "--budget",
        f"{BUDGET_MS}ms",
        "--report",
        str(report),
        "--json",
        str(figures),
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 20)
    finally:
        await reap(process)
    assert process.returncode == 0, err.decode()
    text = out.decode()
    assert "20 requests at 40/s" in text
    assert f"the budget was spent by {SLOW}" in text
    assert b"sent 20" in err  # the progress line
    assert report.read_text().startswith("<!DOCTYPE html>")
    assert orjson.loads(figures.read_bytes())["spent_by"] == SLOW


async def test_ctrl_c_stops_the_run_and_still_reports(dashboard: str, tmp_path: Path) -> None:
    figures = tmp_path / "f.json"
    process = await bench_process(
        dashboard, "--rate", "40", "--duration", "60s", "--json", str(figures)
    )
    assert process.stderr is not None
    try:
        # Wait for the run to be under way (a progress line), then interrupt it.
        while b"answered" not in (line := await asyncio.wait_for(process.stderr.readline(), 20)):
            assert line, "the command ended before it reported progress"
        process.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(process.communicate(), 10)
    finally:
        await reap(process)
    assert process.returncode == 0, err.decode()
    text = out.decode()
    assert "stopped early" in text
    assert f"the budget was spent by {SLOW}" in text
    document = orjson.loads(figures.read_bytes())
    assert document["stopped"] is True
    assert 0 < document["requests"] < 60 * 40
    assert document["responses"] == document["requests"]  # those in flight were waited for
