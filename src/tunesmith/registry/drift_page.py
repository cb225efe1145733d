"""The `tunesmith models report NAME --html FILE` page: the drift table and one chart per rate.

Each chart is inline SVG written here (no script, no stylesheet or font from elsewhere, so the
page opens offline and from a file): a line per version through the windows it answered in, one
marked point per window, and the version's gate baseline as a dashed line where the gate measured
that rate. Every piece of text from the log or the registry is escaped.
"""

from __future__ import annotations

import datetime
from html import escape
from pathlib import Path
from typing import Any, Optional

from tunesmith.registry.drift import MEASURES

TITLES = {"json_valid": "answers that are valid JSON", "stop_rate": "answers that ended on a stop",
          "answer_chars_mean": "mean answer length (characters)", "thumbs_down_rate": "rated answers rated down"}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 16, 36


def _when(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")


def _value_text(measure: str, value: float) -> str:
    return f"{value:.0f}" if measure == "answer_chars_mean" else f"{value:.0%}"


def chart(measure: str, timeline: dict[str, Any], baselines: dict[str, dict[str, float]]) -> str:
    """One SVG chart of `measure`: x the windows, y the rate (0 to 1) or the length."""
    windows, every = timeline["windows"], timeline["every_s"]
    points = {ref: [(p["window"], p[measure]) for p in series if p[measure] is not None]
              for ref, series in timeline["versions"].items()}
    if measure == "answer_chars_mean":
        top = max([v for series in points.values() for _, v in series] + [1.0]) * 1.1
    else:
        top = 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(window: float) -> float:
        return LEFT + (window + 0.5) / windows * plot_w

    def y(value: float) -> float:
        return TOP + plot_h * (1 - value / top)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" data-measure="{escape(measure)}" '
             f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img">',
             f"<title>{escape(TITLES[measure])}</title>",
             f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#ccc"/>']
    for fraction in (0.0, 0.5, 1.0):
        value = top * fraction
        parts.append(f'<text x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end" font-size="11">'
                     f"{escape(_value_text(measure, value))}</text>")
    for index, label in ((0, timeline["start"]), (windows - 1, timeline["start"] + (windows - 1) * every)):
        parts.append(f'<text x="{x(index):.1f}" y="{HEIGHT - 12}" text-anchor="middle" font-size="11">'
                     f"{escape(_when(label))}</text>")
    for number, (ref, series) in enumerate(sorted(points.items())):
        colour = PALETTE[number % len(PALETTE)]
        baseline = baselines.get(ref, {}).get(measure)
        if baseline is not None:
            parts.append(f'<line class="baseline" data-version="{escape(ref)}" x1="{LEFT}" x2="{WIDTH - RIGHT}" '
                         f'y1="{y(baseline):.1f}" y2="{y(baseline):.1f}" stroke="{colour}" stroke-dasharray="4 3">'
                         f"<title>{escape(ref)} gate baseline {escape(_value_text(measure, baseline))}</title></line>")
        if len(series) > 1:
            path = " ".join(f"{x(w):.1f},{y(v):.1f}" for w, v in series)
            parts.append(f'<polyline data-version="{escape(ref)}" points="{path}" fill="none" stroke="{colour}" '
                         'stroke-width="2"/>')
        for window, value in series:
            parts.append(f'<circle class="point" data-version="{escape(ref)}" data-window="{window}" '
                         f'cx="{x(window):.1f}" cy="{y(value):.1f}" r="3" fill="{colour}"><title>'
                         f"{escape(ref)}, {escape(_when(timeline['start'] + window * every))}: "
                         f"{escape(_value_text(measure, value))}</title></circle>")
        parts.append(f'<text x="{LEFT + 8 + 110 * number}" y="{TOP + 14}" font-size="12" fill="{colour}">'
                     f"{escape(ref)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _table(summary: dict[str, Any]) -> str:
    def pct(value: Optional[float]) -> str:
        return "-" if value is None else f"{value:.0%}"

    rows = []
    for ref, v in summary["versions"].items():
        baseline = ", ".join(f"{k} {pct(x)}" for k, x in v["baseline"].items()) or "-"
        cells = (ref, str(v["requests"]), pct(v["json_valid"]), pct(v["stop_rate"]), f"{v['answer_chars_mean']:.0f}",
                 pct(v["thumbs_down_rate"]), baseline)
        rows.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("version", "requests", "json valid", "stop rate", "answer chars",
                                             "thumbs down", "gate baseline"))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render(summary: dict[str, Any], timeline: dict[str, Any], baselines: dict[str, dict[str, float]]) -> str:
    """The whole page: the summary over the window, then a chart per rate."""
    model = escape(summary["model"])
    charts = "".join(f"<h2>{escape(TITLES[m])}</h2>\n{chart(m, timeline, baselines)}\n" for m in MEASURES)
    span = f"{_when(timeline['start'])} to {_when(timeline['start'] + timeline['windows'] * timeline['every_s'])} UTC"
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{model}: drift report</title>"
            "<style>body{font-family:sans-serif;margin:2em;max-width:720px}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}</style></head><body>\n"
            f"<h1>{model}: answers in production</h1>\n"
            f"<p>{escape(span)}, in {timeline['windows']} windows of {timeline['every_s'] / 3600:g} h; "
            "dashed lines: what the promotion gate measured for the version.</p>\n"
            f"{_table(summary)}\n{charts}</body></html>\n")


def write(path: Path, summary: dict[str, Any], timeline: dict[str, Any], baselines: dict[str, dict[str, float]]
          ) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(summary, timeline, baselines), encoding="utf-8")
    return path
