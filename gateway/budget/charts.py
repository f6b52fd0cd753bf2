"""The report's three charts as inline SVG: the latency histogram, each backend's
percentiles against the budget, and a request's waterfall.

Colours come from CSS classes (``ok``, ``timeout``, ``p99``, ``budget`` ...) that the
report's stylesheet defines, so the markup carries meaning and the page the looks.
Every bar has a ``<title>``: hovering shows its exact figures without any script.
"""

from __future__ import annotations

from collections.abc import Sequence

from .analysis import BackendFigures, Histogram, Spread, Waterfall
from .svg import Scale, class_name, element, text, tick_label, title
from .table import format_ms

__all__ = ["histogram_chart", "percentiles_chart", "waterfall_chart"]

_WIDTH = 760
_LABELS = 170  # room on the left for row names in the bar charts
_RIGHT = 110  # room on the right for the value written after a bar
_ROW = 22


def _svg(element_id: str, kind: str, height: float, caption: str, *body: str) -> str:
    return element(
        "svg",
        {
            "xmlns": "http://www.w3.org/2000/svg",
            "id": element_id,
            "class": f"chart {kind}",
            "viewBox": f"0 0 {_WIDTH} {height:.0f}",
            "width": _WIDTH,
            "height": f"{height:.0f}",
            "role": "img",
        },
        title(caption),
        *body,
    )


def _x_axis(scale: Scale, y: float, label: str) -> list[str]:
    parts = [
        element("line", {"class": "axis", "x1": scale.start, "x2": scale.end, "y1": y, "y2": y})
    ]
    for tick in scale.ticks():
        x = scale(tick)
        parts.append(element("line", {"class": "axis", "x1": x, "x2": x, "y1": y, "y2": y + 4.0}))
        parts.append(
            text(x, y + 16.0, tick_label(tick), {"class": "tick", "text-anchor": "middle"})
        )
    parts.append(text(scale.end, y + 32.0, label, {"class": "axis-label", "text-anchor": "end"}))
    return parts


def _budget_line(x: float, top: float, bottom: float, budget_ms: float) -> list[str]:
    """The dashed budget line from ``top`` to ``bottom``, labelled just above ``top``
    (outside the bars, so a bar ending at the budget never hides the label)."""
    return [
        element("line", {"class": "budget", "x1": x, "x2": x, "y1": top, "y2": bottom}),
        text(
            x,
            top - 5.0,
            f"budget {budget_ms:g} ms",
            {"class": "budget-label", "text-anchor": "middle"},
        ),
    ]


def histogram_chart(histogram: Histogram, budget_ms: float) -> str:
    """Client latencies in bins; bins past the budget drawn in the over-budget colour."""
    top, bottom, left, right = 40.0, 250.0, 56.0, float(_WIDTH - 40)
    x = Scale(histogram.upper_ms, left, right)
    tallest = max(histogram.counts, default=0)
    y = Scale(float(max(tallest, 1)), bottom, top)
    parts: list[str] = []
    # Counts are whole: a fractional tick (a run of three requests) would be nonsense.
    for tick in (tick for tick in y.ticks(4) if tick == int(tick)):
        parts.append(
            element(
                "line", {"class": "grid", "x1": left, "x2": right, "y1": y(tick), "y2": y(tick)}
            )
        )
        parts.append(
            text(
                left - 6.0, y(tick) + 4.0, tick_label(tick), {"class": "tick", "text-anchor": "end"}
            )
        )
    for index, count in enumerate(histogram.counts):
        if count == 0:
            continue
        low = index * histogram.bin_ms
        high = low + histogram.bin_ms
        x0, x1 = x(low), x(high)
        over = " over" if low >= budget_ms else ""
        parts.append(
            element(
                "rect",
                {
                    "class": f"bin{over}",
                    "x": x0,
                    "y": y(count),
                    "width": max(1.0, x1 - x0 - 1.0),
                    "height": bottom - y(count),
                },
                title(f"{low:g}-{high:g} ms: {count} requests"),
            )
        )
    parts += _x_axis(x, bottom, "latency as the client saw it, ms")
    parts.append(text(left - 40.0, 14.0, "requests", {"class": "axis-label"}))
    parts += _budget_line(x(budget_ms), top, bottom, budget_ms)
    if histogram.beyond:
        note = f"{histogram.beyond} beyond {histogram.upper_ms:g} ms"
        parts.append(text(left, bottom + 32.0, note, {"class": "note"}))
    return _svg("histogram", "histogram", 300.0, "Latency histogram", *parts)


def percentiles_chart(
    backends: Sequence[BackendFigures], own_time: Spread | None, budget_ms: float
) -> str:
    """Two bars per backend, p50 above p99, against the budget; the gateway's own time last."""
    rows: list[tuple[str, Spread, str]] = [
        (backend.name, backend.latency, "backend") for backend in backends
    ]
    if own_time is not None:
        rows.append(("gateway (own time)", own_time, "own"))
    top = 44.0
    height = top + len(rows) * 2 * _ROW + 50.0
    bottom = height - 44.0
    peak = max([budget_ms, *(spread.p99 for _, spread, _ in rows)])
    x = Scale(peak * 1.05, _LABELS, _WIDTH - _RIGHT)
    parts = [
        element("rect", {"class": "p50", "x": _LABELS, "y": 6.0, "width": 12, "height": 10}),
        text(_LABELS + 16.0, 15.0, "p50", {"class": "tick"}),
        element("rect", {"class": "p99", "x": _LABELS + 50.0, "y": 6.0, "width": 12, "height": 10}),
        text(_LABELS + 66.0, 15.0, "p99", {"class": "tick"}),
    ]
    for index, (name, spread, kind) in enumerate(rows):
        y0 = top + index * 2 * _ROW
        parts.append(
            text(
                _LABELS - 8.0,
                y0 + _ROW + 4.0,
                name,
                {"class": f"row-label {kind}", "text-anchor": "end"},
            )
        )
        for offset, label, value in ((0.0, "p50", spread.p50), (_ROW - 4.0, "p99", spread.p99)):
            width = max(1.0, x(value) - _LABELS)
            parts.append(
                element(
                    "rect",
                    {
                        "class": f"bar {label}",
                        "data-backend": name,
                        "x": _LABELS,
                        "y": y0 + offset + 2.0,
                        "width": width,
                        "height": _ROW - 8.0,
                    },
                    title(f"{name} {label}: {format_ms(value)} ms"),
                )
            )
            parts.append(
                text(
                    _LABELS + width + 4.0,
                    y0 + offset + _ROW - 8.0,
                    f"{label} {format_ms(value)} ms",
                    {"class": "value"},
                )
            )
    parts += _x_axis(x, bottom, "ms")
    parts += _budget_line(x(budget_ms), top - 4.0, bottom, budget_ms)
    return _svg("backend-percentiles", "percentiles", height, "Backend percentiles", *parts)


def waterfall_chart(waterfall: Waterfall, budget_ms: float) -> str:
    """One request's bars: client latency, gateway total, policies, calls, own time."""
    top = 52.0
    height = top + len(waterfall.bars) * _ROW + 50.0
    bottom = height - 44.0
    peak = max([budget_ms, *(bar.start_ms + bar.dur_ms for bar in waterfall.bars)])
    x = Scale(peak * 1.05, _LABELS, _WIDTH - _RIGHT)
    status = "no response" if waterfall.status is None else f"status {waterfall.status}"
    heading = (
        f"{waterfall.which} request: {format_ms(waterfall.latency_ms)} ms, {status}, "
        f"sent at {waterfall.scheduled_s:.2f} s"
    )
    parts = [text(0.0, 16.0, heading, {"class": "heading"})]
    if waterfall.partial:
        parts.append(text(0.0, 30.0, f"partial: {waterfall.partial}", {"class": "note"}))
    for index, bar in enumerate(waterfall.bars):
        y0 = top + index * _ROW
        outcome = f" {class_name(bar.outcome)}" if bar.outcome is not None else ""
        label = {"client": "client (from schedule)", "own": "gateway (own time)"}.get(
            bar.kind, bar.name
        )
        parts.append(
            text(
                _LABELS - 8.0, y0 + _ROW - 8.0, label, {"class": "row-label", "text-anchor": "end"}
            )
        )
        x0 = x(bar.start_ms)
        width = max(1.0, x(bar.start_ms + bar.dur_ms) - x0)
        described = f"{bar.name}: {format_ms(bar.dur_ms)} ms" + (
            f" ({bar.outcome})" if bar.outcome else ""
        )
        parts.append(
            element(
                "rect",
                {
                    "class": f"bar {bar.kind}{outcome}",
                    "data-name": bar.name,
                    "x": x0,
                    "y": y0 + 3.0,
                    "width": width,
                    "height": _ROW - 6.0,
                },
                title(described),
            )
        )
        value = f"{format_ms(bar.dur_ms)} ms" + (f" {bar.outcome}" if bar.outcome else "")
        parts.append(text(x0 + width + 4.0, y0 + _ROW - 8.0, value, {"class": "value"}))
    parts += _x_axis(x, bottom, "ms since the request was due")
    parts += _budget_line(x(budget_ms), top - 4.0, bottom, budget_ms)
    element_id = f"waterfall-{waterfall.which}"
    return _svg(element_id, "waterfall", height, f"Waterfall of the {heading}", *parts)
