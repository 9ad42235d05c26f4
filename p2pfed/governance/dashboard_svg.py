"""Inline SVG charts for the dashboard: pure functions from numbers to markup.

Theory of operation: each chart maps its values onto a fixed viewBox and returns one
``<svg>`` string; the page embeds it as is, so nothing loads from elsewhere and no script
runs. Points carry ``data-round`` and ``data-epsilon`` attributes (and a ``<title>`` that a
browser shows on hover), so a test reading the DOM counts the points a person sees. Only
numbers reach these functions; labels are escaped anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT, PAD = 520, 220, 36


def _scale(lo: float, hi: float, out_lo: float, out_hi: float) -> tuple[float, float]:
    span = hi - lo if hi > lo else 1.0
    k = (out_hi - out_lo) / span
    return k, out_lo - k * lo


def epsilon_chart(
    spent: Sequence[tuple[int, float]],
    planned: Sequence[tuple[int, float]],
    budget: float | None,
    rounds: int,
) -> str:
    """ε spent per round (points joined by a line), the planned curve (dashed), the budget."""
    if not spent and not planned:
        return '<p class="empty">no privacy spend recorded yet</p>'
    ys = [e for _, e in spent] + [e for _, e in planned]
    # A budget far above the spend would flatten the curves: then it is named, not drawn.
    budget_drawn = budget is not None and budget > 0 and budget <= 3 * max(ys)
    if budget_drawn:
        ys.append(float(budget or 0))
    xs = [r for r, _ in spent] + [r for r, _ in planned] + [max(0, rounds - 1)]
    kx, bx = _scale(min(0, *xs), max(1, *xs), PAD, WIDTH - PAD / 2)
    ky, by = _scale(0.0, max(ys) * 1.08, HEIGHT - PAD, PAD / 2)

    def pt(r: int, e: float) -> str:
        return f"{kx * r + bx:.1f},{ky * e + by:.1f}"

    parts = [
        f'<svg class="chart" id="epsilon-chart" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="epsilon spent per round">',
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD / 2}" y2="{HEIGHT - PAD}" '
        'stroke="#888"/>',
        f'<line x1="{PAD}" y1="{PAD / 2}" x2="{PAD}" y2="{HEIGHT - PAD}" stroke="#888"/>',
        f'<text x="4" y="{PAD / 2 + 4}" font-size="11">ε</text>',
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 8}" font-size="11">round</text>',
    ]
    top = max(ys)
    parts.append(
        f'<text x="4" y="{ky * top + by + 4:.1f}" font-size="10">{escape(f"{top:.2f}")}</text>'
    )
    if budget is not None and budget_drawn:
        y = ky * budget + by
        parts.append(
            f'<line class="budget" x1="{PAD}" y1="{y:.1f}" x2="{WIDTH - PAD / 2}" y2="{y:.1f}" '
            'stroke="#c0392b" stroke-dasharray="2,3"/>'
            f'<text x="{PAD + 4}" y="{y - 4:.1f}" font-size="10" fill="#c0392b">'
            f"budget {escape(f'{budget:g}')}</text>"
        )
    if budget is not None and not budget_drawn:
        parts.append(
            f'<text class="budget-note" x="{WIDTH - PAD * 5}" y="{PAD / 2 + 4}" font-size="10" '
            f'fill="#c0392b">budget {escape(f"{budget:g}")}: far above</text>'
        )
    if spent:
        parts.append(
            '<polyline class="spent" fill="none" stroke="#2471a3" stroke-width="2" '
            f'points="{" ".join(pt(r, e) for r, e in spent)}"/>'
        )
    if planned:
        parts.append(
            '<polyline class="planned" fill="none" stroke="#f39c12" stroke-width="1.5" '
            'stroke-dasharray="5,4" '
            f'points="{" ".join(pt(r, e) for r, e in planned)}"/>'
        )
    for r, e in spent:
        cx, cy = pt(r, e).split(",")
        parts.append(
            f'<circle class="eps-point" data-round="{r}" data-epsilon="{e:.6g}" '
            f'cx="{cx}" cy="{cy}" r="3.5" fill="#2471a3">'
            f"<title>round {r}: ε = {e:.3f}</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)


def round_bars(durations: Sequence[tuple[int, float, bool]]) -> str:
    """One bar per round, its height the duration; failed or aborted rounds in red."""
    if not durations:
        return '<p class="empty">no round finished yet</p>'
    longest = max(d for _, d, _ in durations) or 1.0
    n = len(durations)
    width = max(4.0, (WIDTH - 2 * PAD) / n - 2)
    ky, by = _scale(0.0, longest, HEIGHT / 2 - PAD / 2, PAD / 2)
    parts = [
        f'<svg class="chart" id="round-chart" viewBox="0 0 {WIDTH} {HEIGHT / 2}" '
        f'width="{WIDTH}" height="{HEIGHT / 2}" role="img" aria-label="round durations">',
        f'<text x="4" y="{PAD / 2 + 4}" font-size="10">{longest:.1f} s</text>',
    ]
    for i, (r, d, ok) in enumerate(durations):
        y = ky * d + by
        parts.append(
            f'<rect class="round-bar" data-round="{r}" x="{PAD + i * (width + 2):.1f}" '
            f'y="{y:.1f}" width="{width:.1f}" height="{HEIGHT / 2 - PAD / 2 - y:.1f}" '
            f'fill="{"#27ae60" if ok else "#c0392b"}"><title>round {r}: {d:.2f} s</title></rect>'
        )
    parts.append("</svg>")
    return "".join(parts)
