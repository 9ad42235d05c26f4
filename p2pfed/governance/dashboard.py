"""The node's dashboard page: ``DashboardData`` in, one self-contained HTML string out.

Theory of operation: pure rendering, no I/O. ``render_page`` lays out one node's section
(or several side by side, for the demo) in a page that refreshes itself with a ``<meta
http-equiv=refresh>``, carries its CSS inline and its charts as inline SVG
(``dashboard_svg``), and runs no script — so it works on an offline machine and a strict
browser. Every string that came from a file (member names and errors name other members'
behaviour, drift messages, reasons) goes through ``_text``, which escapes it for HTML: a
member named ``<script>`` shows as text. The inputs hold no data rows or per-patient
values (``dashboard_data``), so the page cannot show them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from html import escape

from p2pfed.governance.dashboard_data import DashboardData
from p2pfed.governance.dashboard_svg import epsilon_chart, round_bars

REFRESH_S = 5

_CSS = """
body{font-family:system-ui,sans-serif;margin:1em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:.2em 0} h2{font-size:1.05em;margin:1em 0 .3em}
.nodes{display:grid;grid-template-columns:repeat(auto-fit,minmax(540px,1fr));gap:1em}
.node{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em 1em}
table{border-collapse:collapse;font-size:.85em;width:100%}
th,td{border-bottom:1px solid #eee;padding:2px 6px;text-align:left;vertical-align:top;
overflow-wrap:break-word}
.ok{color:#1e8449;font-weight:600} .bad{color:#c0392b;font-weight:600}
.empty,.muted{color:#888;font-size:.85em} code{font-size:.9em}
.err{word-break:break-all}
"""


def _text(value: object) -> str:
    """``value`` as HTML text: every peer- or file-supplied string passes through here."""
    return escape(str(value), quote=True)


def _table(cls: str, head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table of already-escaped cells."""
    if not rows:
        return '<p class="empty">none yet</p>'
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _members(d: DashboardData) -> str:
    rows = [
        [
            _text(m.name),
            '<span class="ok">connected</span>'
            if m.connected
            else '<span class="bad">not connected</span>',
            "<br>".join(f"<code>{_text(a)}</code>" for a in m.addresses) or "—",
            "—" if m.last_round is None else str(m.last_round),
            "—" if m.last_error is None else f'<span class="err">{_text(m.last_error)}</span>',
        ]
        for m in d.members
    ]
    head = ("member", "connection", "reached at (roster)", "last round seen", "last error")
    return _table("members", head, rows)


def _rounds(d: DashboardData) -> str:
    bars = round_bars([(r.round, r.duration_s, r.outcome == "completed") for r in d.rounds])
    rows = [
        [
            str(r.round),
            _text(r.outcome)
            if r.outcome == "completed"
            else f'<span class="bad">{_text(r.outcome)}</span>',
            f"{r.duration_s:.2f} s",
            " · ".join(f"{_text(name)} {s:.2f} s" for name, s in r.stages_s) or "—",
            str(r.contributors),
            "—" if r.reason is None else _text(r.reason),
        ]
        for r in reversed(d.rounds[-12:])
    ]
    head = ("round", "outcome", "duration", "stages", "contributors", "reason")
    note = '<p class="muted">latest 12 rounds</p>'
    return bars + _table("rounds", head, rows) + note


def _privacy(d: DashboardData) -> str:
    chart = epsilon_chart(d.epsilon, d.planned, d.epsilon_budget, d.planned_rounds)
    spent = f"{d.epsilon[-1][1]:.3f}" if d.epsilon else "0"
    budget = "no budget" if d.epsilon_budget is None else f"budget {d.epsilon_budget:g}"
    legend = (
        f'<p class="muted">ε spent <b class="eps-spent">{spent}</b> of {budget}; '
        f"{len(d.epsilon)} rounds charged; dashed orange: the accountant's plan for "
        f"{d.planned_rounds} rounds at the recorded mechanism</p>"
    )
    return chart + legend


def _models(d: DashboardData) -> str:
    rows = [
        [
            f"<code>{_text(m.version)}</code>",
            "—" if m.parent is None else f"<code>{_text(m.parent)}</code>",
            str(m.round),
            str(m.contributors),
            ", ".join(f"{_text(k)} {v:.3f}" for k, v in sorted(m.metrics.items())) or "—",
        ]
        for m in reversed(d.models[-8:])
    ]
    head = ("version", "parent", "round", "contributors", "validation metrics")
    return _table("models", head, rows)


def _audit(d: DashboardData) -> str:
    a = d.audit
    if a.verified:
        return (
            f'<p id="audit-status" class="ok">audit chain verified: {a.entries} entries, '
            "every signature and link checked</p>"
        )
    return f'<p id="audit-status" class="bad">audit chain BROKEN: {_text(a.problem)}</p>'


def _drift(d: DashboardData) -> str:
    if not d.drift:
        return '<p class="empty">no drift alert</p>'
    items = "".join(f"<li>round {r}: {_text(msg)}</li>" for r, msg in d.drift[-10:])
    return f'<ul class="drift">{items}</ul>'


def render_node(d: DashboardData, now: float | None = None) -> str:
    """One node's section (a ``<section>`` element)."""
    now = time.time() if now is None else now
    age = "never" if d.updated is None else f"{max(0.0, now - d.updated):.0f} s ago"
    return (
        f'<section class="node" data-node="{_text(d.name)}">'
        f"<h1>{_text(d.name)}</h1>"
        f'<p class="muted">state <b class="state">{_text(d.state)}</b>; status written {age}</p>'
        f"<h2>Members</h2>{_members(d)}"
        f"<h2>Rounds</h2>{_rounds(d)}"
        f"<h2>Privacy budget (ε)</h2>{_privacy(d)}"
        f"<h2>Model versions</h2>{_models(d)}"
        f"<h2>Audit log</h2>{_audit(d)}"
        f"<h2>Drift alerts</h2>{_drift(d)}"
        "</section>"
    )


def render_page(
    nodes: Sequence[DashboardData], title: str, refresh_s: int = REFRESH_S, now: float | None = None
) -> str:
    """The whole page: ``nodes`` side by side, refreshing itself every ``refresh_s``."""
    sections = "".join(render_node(d, now) for d in nodes)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{int(refresh_s)}">'
        f"<title>{_text(title)}</title><style>{_CSS}</style></head><body>"
        f'<p class="muted">{_text(title)} — read-only; refreshes every {int(refresh_s)} s; '
        "shows counts, ε, durations, hashes and validation metrics, never data rows</p>"
        f'<div class="nodes">{sections}</div></body></html>'
    )
