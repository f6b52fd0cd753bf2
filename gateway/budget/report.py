"""The figures as one self-contained HTML page: inline CSS, inline SVG, no script.

Self-contained because a report is mailed, attached to tickets and opened months later,
offline: nothing in it may depend on a CDN or on a file next to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from .analysis import OUTCOMES, Figures, Spread
from .charts import histogram_chart, percentiles_chart, waterfall_chart
from .table import format_ms

__all__ = ["render_report"]

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; color: #222; margin: 2em auto; max-width: 800px;
       padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
p.run, p.hint, footer { color: #555; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { padding: 2px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { border-bottom: 1px solid #bbb; }
.verdict { font-weight: 600; }
.warn { color: #b03a2e; }
svg.chart { display: block; margin: 0.5em 0 1.5em; max-width: 100%; height: auto; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
svg text.heading { font-size: 13px; font-weight: 600; }
svg text.note, svg text.axis-label { fill: #666; }
svg .axis { stroke: #888; }
svg .grid { stroke: #eee; }
svg .budget { stroke: #c0392b; stroke-width: 1.5; stroke-dasharray: 5 3; }
svg text.budget-label { fill: #c0392b; }
svg .bin { fill: #4a78b5; }
svg .bin.over { fill: #d9534f; }
svg .p50 { fill: #8dbbe6; }
svg .p99 { fill: #2a5d9f; }
svg .bar.client { fill: #555; }
svg .bar.total { fill: #999; }
svg .bar.policy { fill: #2c7fb8; }
svg .bar.own { fill: #8e44ad; }
svg .bar.call { fill: #e67e22; }
svg .bar.call.ok { fill: #3a8f5c; }
svg .bar.call.timeout { fill: #c0392b; }
svg .bar.call.cancelled { fill: #aaa; }
"""


def render_report(figures: Figures, *, generated: str = "") -> str:
    """The whole page. ``generated`` (a timestamp) goes into the footer when given."""
    budget = f"{figures.budget_ms:g}"
    sections = [
        f"<h1>Latency budget report</h1>\n<p class=run>{escape(_run_line(figures))}</p>",
        _summary(figures),
        "<section id=latency>\n<h2>Latency histogram</h2>\n"
        "<p class=hint>Each request's latency as the client saw it, from the moment it was "
        "due to be sent to the last byte of the answer. Bins past the budget are red; the "
        f"dashed line is the budget ({budget} ms).</p>\n"
        + histogram_chart(figures.histogram, figures.budget_ms)
        + "\n</section>",
        _backends(figures),
        _waterfalls(figures),
    ]
    footer = f"<footer>gateway bench{escape(f', {generated}') if generated else ''}</footer>"
    return (
        "<!DOCTYPE html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n"
        f"<title>Latency budget: {escape(figures.method)} {escape(figures.url)}</title>\n"
        f"<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(sections)
        + f"\n{footer}\n</body>\n</html>\n"
    )


def _run_line(figures: Figures) -> str:
    line = (
        f"{figures.method} {figures.url}: {figures.requests} requests at {figures.rate:g}/s "
        f"for {figures.duration_s:g} s (took {figures.elapsed_s:.2f} s), "
        f"budget {figures.budget_ms:g} ms"
    )
    if figures.stopped:
        line += "; stopped early, the figures cover the requests sent until then"
    if figures.abandoned:
        line += f"; {figures.abandoned} requests in flight abandoned"
    return line


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], table_id: str) -> str:
    header = "".join(f"<th>{escape(cell)}</th>" for cell in head)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return (
        f"<table id={table_id}>\n<thead><tr>{header}</tr></thead>\n"
        f"<tbody>\n{body}\n</tbody>\n</table>"
    )


def _spread_row(label: str, spread: Spread) -> list[str]:
    return [label, *(format_ms(v) for v in (spread.p50, spread.p90, spread.p99, spread.max))]


def _share(part: int, whole: int) -> str:
    return f"{part} of {whole} ({(part / whole if whole else 0.0) * 100:.1f} %)"


def _summary(figures: Figures) -> str:
    rows = []
    for label, spread in (
        ("client latency", figures.latency),
        ("in the gateway (total)", figures.server_total),
        ("gateway own time", figures.own_time),
    ):
        if spread is not None:
            rows.append(_spread_row(label, spread))
    rows += [_spread_row(f"policy {name}", spread) for name, spread in figures.policies.items()]
    facts = [
        ("over budget", _share(figures.over_budget, figures.requests)),
        ("partial (Gateway-Partial)", _share(figures.partial, figures.responses)),
        ("statuses", ", ".join(f"{key}: {n}" for key, n in figures.statuses.items())),
        ("answers per second", f"{figures.achieved_rate:.1f}"),
    ]
    if figures.partial_parts:
        missing = ", ".join(f"{name} {n}" for name, n in figures.partial_parts.items())
        facts.insert(2, ("parts missing", missing))
    listed = "\n".join(
        f"<tr><th>{escape(name)}</th><td>{escape(value)}</td></tr>" for name, value in facts
    )
    verdict = (
        f"The budget was spent by <strong>{escape(figures.spent_by)}</strong>: the last "
        "call to end in most of the requests over budget."
        if figures.spent_by is not None
        else "No backend spent the budget."
        if figures.over_budget == 0
        else "Requests went over budget with no backend to blame (no Server-Timing)."
    )
    return (
        "<section id=summary>\n<h2>Summary</h2>\n"
        + _table(["ms", "p50", "p90", "p99", "max"], rows, "percentiles")
        + f"\n<table id=facts>\n{listed}\n</table>\n<p class=verdict>{verdict}</p>\n</section>"
    )


def _backends(figures: Figures) -> str:
    if not figures.backends:
        return (
            "<section id=backends>\n<h2>Backends against the budget</h2>\n"
            "<p class=hint>No upstream call appeared in Server-Timing.</p>\n</section>"
        )
    seen = {name for backend in figures.backends for name in backend.outcomes}
    outcomes = [name for name in OUTCOMES if name in seen] + sorted(seen - set(OUTCOMES))
    rows = [
        [
            backend.name,
            format_ms(backend.latency.p50),
            format_ms(backend.latency.p99),
            format_ms(backend.latency.max),
            *(str(backend.outcomes.get(name, 0)) for name in outcomes),
            str(backend.slowest),
            str(backend.spent_budget),
        ]
        for backend in figures.backends
    ]
    head = ["backend (ms)", "p50", "p99", "max", *outcomes, "last to end", "spent budget"]
    return (
        "<section id=backends>\n<h2>Backends against the budget</h2>\n"
        "<p class=hint>Each backend's call duration, p50 and p99, from Server-Timing; "
        "the dashed line is the budget. <em>last to end</em>: responses that waited for "
        "this call last; <em>spent budget</em>: those of them that were over budget.</p>\n"
        + percentiles_chart(figures.backends, figures.own_time, figures.budget_ms)
        + "\n"
        + _table(head, rows, "backend-table")
        + "\n</section>"
    )


def _waterfalls(figures: Figures) -> str:
    charts = [
        waterfall_chart(waterfall, figures.budget_ms)
        for waterfall in (figures.median, figures.slowest)
        if waterfall is not None
    ]
    if not charts:
        body = "<p class=hint>No response carried Server-Timing.</p>"
    else:
        body = (
            "<p class=hint>The median request and the slowest one, from their Server-Timing. "
            "Policies are drawn one after the other from the start, upstream calls from the "
            "end of the policies (a fan-out starts them together), and the gateway's own time "
            "as one bar from zero, though it is spread over the request (routing before the "
            "calls, assembly after).</p>\n" + "\n".join(charts)
        )
    return f"<section id=waterfalls>\n<h2>Waterfalls</h2>\n{body}\n</section>"
