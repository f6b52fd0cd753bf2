"""The figures as the plain-text table printed at the end of a run."""

from __future__ import annotations

from collections.abc import Sequence

from .analysis import OUTCOMES, Figures, Spread

__all__ = ["format_ms", "render_table"]


def format_ms(value: float) -> str:
    """Milliseconds with the precision they carry: Server-Timing writes calls to 0.1 ms
    and policies to 0.01 ms, so sub-millisecond values get two decimals."""
    return f"{value:.2f}" if value < 1.0 else f"{value:.1f}"


def format_share(part: int, whole: int) -> str:
    share = part / whole if whole else 0.0
    return f"{part} of {whole}  {share * 100:.1f} %"


def render_table(figures: Figures) -> str:
    lines = [f"gateway bench: {figures.method} {figures.url}", _run_line(figures)]
    # An abandoned run keeps only what was answered; a stopped one, all it sent.
    counted = "answered" if figures.abandoned else "sent"
    if figures.stopped:
        lines.append(
            f"stopped early (Ctrl-C): the figures cover the {figures.requests} requests {counted}"
        )
    if figures.abandoned:
        lines.append(f"{figures.abandoned} requests still in flight were abandoned, in no figure")
    if figures.requests == 0:
        lines.append(f"no request was {counted}")
        return "\n".join(lines) + "\n"

    lines.append("")
    spreads: list[tuple[str, Spread | None]] = [
        ("client latency", figures.latency),
        ("in the gateway (total)", figures.server_total),
        ("gateway own time", figures.own_time),
        *((f"policy {name}", spread) for name, spread in figures.policies.items()),
    ]
    rows = [["ms", "p50", "p90", "p99", "max"]]
    for label, spread in spreads:
        if spread is not None:
            rows.append([label, *(format_ms(v) for v in _four(spread))])
    lines += _columns(rows)

    lines.append("")
    budget = f"{figures.budget_ms:g}"
    summary = [
        [f"over budget (> {budget} ms)", format_share(figures.over_budget, figures.requests)],
        ["partial (Gateway-Partial)", format_share(figures.partial, figures.responses)],
    ]
    if figures.partial_parts:
        missing = ", ".join(f"{name} {count}" for name, count in figures.partial_parts.items())
        summary.append(["  parts missing", missing])
    statuses = ", ".join(f"{status}: {count}" for status, count in figures.statuses.items())
    summary.append(["statuses", statuses])
    lines += _columns(summary, numeric_from=99)

    if figures.backends:
        lines.append("")
        lines += _backend_rows(figures)
    lines.append("")
    lines.append(_verdict(figures))
    if figures.send_lag_p99_ms > 5.0:
        lines.append(
            f"note: the generator sent late (p99 {format_ms(figures.send_lag_p99_ms)} ms "
            "behind schedule): its machine was busy, and that lateness is in the latencies"
        )
    return "\n".join(lines) + "\n"


def _run_line(figures: Figures) -> str:
    return (
        f"{figures.requests} requests at {figures.rate:g}/s for {figures.duration_s:g} s "
        f"(took {figures.elapsed_s:.2f} s, {figures.achieved_rate:.0f} answers/s), "
        f"budget {figures.budget_ms:g} ms"
    )


def _four(spread: Spread) -> tuple[float, float, float, float]:
    return spread.p50, spread.p90, spread.p99, spread.max


def _backend_rows(figures: Figures) -> list[str]:
    seen = {name for backend in figures.backends for name in backend.outcomes}
    outcomes = [name for name in OUTCOMES if name in seen] + sorted(seen - set(OUTCOMES))
    rows = [["backend ms", "p50", "p99", "max", *outcomes, "last", "spent"]]
    for backend in figures.backends:
        spread = backend.latency
        rows.append(
            [
                backend.name,
                format_ms(spread.p50),
                format_ms(spread.p99),
                format_ms(spread.max),
                *(str(backend.outcomes.get(name, 0)) for name in outcomes),
                str(backend.slowest),
                str(backend.spent_budget),
            ]
        )
    return _columns(rows)


def _verdict(figures: Figures) -> str:
    if figures.over_budget == 0:
        return f"every request was answered within the {figures.budget_ms:g} ms budget"
    if figures.spent_by is None:
        return (
            f"{figures.over_budget} requests went over the budget, none with a backend "
            "to blame (no Server-Timing, or no upstream call in it)"
        )
    spent = next(b for b in figures.backends if b.name == figures.spent_by).spent_budget
    return (
        f"the budget was spent by {figures.spent_by}: the last call to end in {spent} "
        f"of the {figures.over_budget} requests over budget"
    )


def _columns(rows: Sequence[Sequence[str]], numeric_from: int = 1) -> list[str]:
    """Rows as aligned text: the first columns left-aligned, numbers right-aligned."""
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i >= numeric_from else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        out.append("  " + "  ".join(cells).rstrip())
    return out
