"""The budget report's outputs from known figures: the text table, the HTML page and its
SVG charts, and the command's flags."""

from __future__ import annotations

import argparse
from html.parser import HTMLParser
from pathlib import Path

import pytest

from gateway.budget.analysis import Figures, analyse
from gateway.budget.command import add_arguments, options_from_args
from gateway.budget.report import render_report
from gateway.budget.table import render_table
from gateway.loadgen import LoadResult, Sample

SLOW = (
    'user;dur=4.0;desc="ok", recs;dur=50.0;desc="timeout", ratelimit;dur=0.05, '
    "gateway;dur=0.3, total;dur=50.3"
)
FAST = 'user;dur=3.0;desc="ok", recs;dur=5.0;desc="ok", gateway;dur=0.2, total;dur=5.2'


def figures(url: str = "http://gw/v1/dash/1", backend: str = "recs") -> Figures:
    samples = [
        Sample(
            scheduled=i / 100,
            latency_s=0.052 + i / 10_000,
            status=200,
            server_timing=SLOW.replace("recs", backend),
            partial=f"{backend};reason=timeout",
            error=None,
        )
        for i in range(8)
    ]
    samples += [Sample(0.09, 0.006, 200, FAST.replace("recs", backend), None, None)]
    samples += [Sample(0.1, 5.0, None, None, None, "timeout")]
    return analyse(LoadResult(url, 100, 0.1, samples, elapsed_s=5.1), 0.050)


# --- the table -----------------------------------------------------------------------------


def test_table_shows_the_figures_and_names_the_backend_that_spent_the_budget():
    text = render_table(figures())
    # Compare words, not the padding that aligns the columns.
    lines = [" ".join(line.split()) for line in text.splitlines()]
    assert lines[0] == "gateway bench: GET http://gw/v1/dash/1"
    assert "budget 50 ms" in lines[1]
    assert "client latency 52.3 52.7 5000.0 5000.0" in lines  # the failure is counted
    assert "policy ratelimit 0.05 0.05 0.05 0.05" in lines
    assert "over budget (> 50 ms) 9 of 10 90.0 %" in lines
    assert "partial (Gateway-Partial) 8 of 9 88.9 %" in lines
    assert "parts missing recs 8" in lines
    assert "statuses 200: 9, error:timeout: 1" in lines
    # p50 p99 max, then ok and timeout, then last to end (the fast answer too) and spent.
    assert "recs 50.0 50.0 50.0 1 8 9 8" in lines
    assert "user 4.0 4.0 4.0 9 0 0 0" in lines
    assert "the budget was spent by recs: the last call to end in 8 of the 9" in text


def test_table_of_a_stopped_run_says_so():
    stopped = analyse(LoadResult("http://gw/", 10, 10, [], elapsed_s=0.0, stopped=True), 0.05)
    text = render_table(stopped)
    assert "stopped early" in text
    assert "no request was sent" in text


# --- the HTML report ---------------------------------------------------------------------


class Outline(HTMLParser):
    """What the tests look for in the page: SVGs by id, their element classes, and any
    element that would fetch something."""

    def __init__(self) -> None:
        super().__init__()
        self.svgs: dict[str, list[tuple[str, dict[str, str | None]]]] = {}
        self.current: str | None = None
        self.fetching: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append(tag)
        if tag == "svg":
            self.current = attributes.get("id") or ""
            self.svgs[self.current] = []
        elif self.current is not None:
            self.svgs[self.current].append((tag, attributes))
        if tag in ("script", "link", "img", "iframe") or "src" in attributes:
            self.fetching.append(tag)
        if any(v and "url(" in v for v in attributes.values()):
            self.fetching.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag == "svg":
            self.current = None

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self.current = None


def outline(page: str) -> Outline:
    parser = Outline()
    parser.feed(page)
    parser.close()
    return parser


def classes(elements: list[tuple[str, dict[str, str | None]]], tag: str) -> list[set[str]]:
    return [set((a.get("class") or "").split()) for t, a in elements if t == tag]


def test_report_is_one_page_with_the_four_charts_and_nothing_to_fetch():
    page = render_report(figures(), generated="2025-01-01T00:00:00Z")
    parsed = outline(page)
    assert set(parsed.svgs) == {
        "histogram",
        "backend-percentiles",
        "waterfall-median",
        "waterfall-slowest",
    }
    assert parsed.fetching == []
    assert "<style>" in page
    assert "2025-01-01T00:00:00Z" in page
    for elements in parsed.svgs.values():
        assert {"budget"} in classes(elements, "line"), "every chart marks the budget"


def test_histogram_marks_bins_over_the_budget():
    bins = classes(outline(render_report(figures())).svgs["histogram"], "rect")
    assert {"bin", "over"} in bins  # the 52 ms answers
    assert {"bin"} in bins  # the 6 ms one


def test_percentile_bars_show_p50_and_p99_for_every_backend():
    elements = outline(render_report(figures())).svgs["backend-percentiles"]
    bars = {
        (a.get("data-backend"), (a.get("class") or "").split()[-1])
        for t, a in elements
        if t == "rect" and a.get("data-backend")
    }
    assert {("user", "p50"), ("user", "p99"), ("recs", "p50"), ("recs", "p99")} <= bars


def test_waterfalls_colour_calls_by_outcome():
    svgs = outline(render_report(figures())).svgs
    slowest = classes(svgs["waterfall-slowest"], "rect")
    assert {"bar", "call", "timeout"} in slowest
    assert {"bar", "call", "ok"} in slowest
    assert {"bar", "client"} in slowest
    assert {"bar", "own"} in slowest


def test_names_from_the_server_and_the_url_are_escaped():
    hostile = figures(url="http://gw/<script>alert(1)</script>", backend='x"><script>y')
    page = render_report(hostile)
    parsed = outline(page)
    assert "script" not in parsed.tags
    assert "&lt;script&gt;" in page


# --- flags ---------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_flags_become_options(tmp_path: Path):
    body = tmp_path / "body.json"
    body.write_bytes(b'{"a": 1}')
    options = options_from_args(
        parse(
            "http://gw/x",
            "--rate",
            "200",
            "--duration",
            "10s",
            "--budget",
            "80ms",
            "-H",
            "X-Api-Key: k:1",
            "--header",
            "Accept:application/json",
            "--body-file",
            str(body),
            "--connections",
            "8",
            "--timeout",
            "2s",
        )
    )
    assert (options.rate, options.duration, options.budget) == (200.0, 10.0, 0.08)
    assert options.headers == {"X-Api-Key": "k:1", "Accept": "application/json"}
    assert (options.method, options.body) == ("POST", b'{"a": 1}')
    assert (options.connections, options.timeout) == (8, 2.0)


def test_defaults():
    options = options_from_args(parse("http://gw/x"))
    assert (options.method, options.body, options.budget) == ("GET", None, 0.05)
    assert (options.rate, options.duration) == (100.0, 10.0)


def test_an_explicit_method_wins_over_the_body():
    assert (
        options_from_args(parse("http://gw/x", "--body", "{}", "--method", "put")).method == "PUT"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ("http://gw/x", "--duration", "10"),  # a bare number is refused: 10 what?
        ("http://gw/x", "--budget", "0ms"),
        ("http://gw/x", "--rate", "0"),
        ("http://gw/x", "--rate", "nan"),
        ("http://gw/x", "-H", "no colon"),
        ("http://gw/x", "--connections", "0"),
        ("http://gw/x", "--body", "a", "--body-file", "b"),
    ],
)
def test_bad_flags_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        parse(*argv)
    assert "error" in capsys.readouterr().err


def test_a_url_must_be_http():
    with pytest.raises(ValueError, match="http://"):
        options_from_args(parse("gw:8080/x"))
