"""What `tunesmith eval` writes: metrics.json, samples.jsonl, report.md, report.html and PNG charts."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Sequence

from tunesmith.eval.compare import MetricRow
from tunesmith.manifest import atomic_write_text

# Metrics shown as shares (0-1) versus on a 0-100 scale, for the two chart panels.
_SCALE_100 = {"bleu", "chrf", "rouge_l"}
_NOT_CHARTED = {"perplexity", "output_tokens_mean", "output_tokens_median"}
_COLORS = {"tuned": "#2f6fdf", "base": "#9aa5b1"}


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.1f}"
    return f"{value:.4f}" if abs(value) < 1 else f"{value:.2f}"


def _fmt_delta(row: MetricRow) -> str:
    if row.delta is None:
        return "—"
    mark = {"tuned": " ▲", "base": " ▼", "same": "", None: ""}[row.better]
    return f"{row.delta:+.4f}{mark}" if abs(row.delta) < 1 else f"{row.delta:+.2f}{mark}"


def write_charts(out: Path, rows: Sequence[MetricRow], lengths: dict[str, list[int]],
                 wins: dict[str, Any] | None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    compare = any(r.base is not None for r in rows)
    panels = [
        ("shares (higher is better)", [r for r in rows if r.name not in _SCALE_100 | _NOT_CHARTED]),
        ("text overlap, 0-100", [r for r in rows if r.name in _SCALE_100]),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(12, max(3.0, 0.42 * max(len(p[1]) for p in panels) + 1.5)))
    for ax, (title, panel) in zip(axes, panels):
        names = [r.name for r in panel]
        y = list(range(len(panel)))
        height = 0.38 if compare else 0.6
        if compare:
            ax.barh([v + height / 2 for v in y], [r.base or 0.0 for r in panel], height, label="base",
                    color=_COLORS["base"])
        ax.barh([v - (height / 2 if compare else 0) for v in y], [r.tuned or 0.0 for r in panel], height,
                label="tuned", color=_COLORS["tuned"])
        ax.set_yticks(y, names)
        ax.invert_yaxis()
        ax.set_title(title)
        ax.set_xlim(0, 1.0 if title.startswith("shares") else 100.0)
        ax.grid(axis="x", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    path = out / "metrics.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(7, 3.6))
    upper = max(max(v, default=0) for v in lengths.values()) + 1
    bins = min(40, max(5, upper))
    for name, values in lengths.items():
        ax.hist(values, bins=bins, range=(0, upper), alpha=0.6, label=name, color=_COLORS[name])
    ax.set_xlabel("output tokens")
    ax.set_ylabel("examples")
    ax.set_title("output length")
    ax.legend()
    fig.tight_layout()
    path = out / "lengths.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    if wins is not None:
        fig, ax = plt.subplots(figsize=(7, 1.8))
        left = 0.0
        for key, label, color in (("tuned_win_rate", "tuned better", _COLORS["tuned"]), ("tie_rate", "tie", "#c9ced6"),
                                  ("base_win_rate", "base better", _COLORS["base"])):
            ax.barh([0], [wins[key]], left=left, color=color, label=f"{label} {wins[key]:.0%}")
            left += wins[key]
        ax.set_xlim(0, 1)
        ax.set_yticks([])
        ax.set_title(f"per-example winner by {wins['metric']}")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=3, frameon=False)
        fig.tight_layout()
        path = out / "wins.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _table_rows(rows: Sequence[MetricRow]) -> tuple[list[str], list[list[str]]]:
    compare = any(r.base is not None for r in rows)
    if compare:
        return ["metric", "base", "tuned", "delta"], [[r.name, _fmt(r.base), _fmt(r.tuned), _fmt_delta(r)] for r in rows]
    return ["metric", "value"], [[r.name, _fmt(r.tuned)] for r in rows]


def markdown_table(rows: Sequence[MetricRow]) -> str:
    header, body = _table_rows(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def _sections(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """(title, markdown) for the optional parts of the report."""
    sections = []
    wins = metrics.get("win_rate")
    if wins:
        sections.append(("Per-example winner", (
            f"By `{wins['metric']}` over {wins['examples']} examples: tuned better on {wins['tuned_wins']} "
            f"({wins['tuned_win_rate']:.0%}), base better on {wins['base_wins']} ({wins['base_win_rate']:.0%}), "
            f"ties {wins['ties']} ({wins['tie_rate']:.0%}).\n\n![wins](wins.png)")))
    judge = metrics.get("judge")
    if judge:
        sections.append(("LLM judge", (
            f"`{judge['model']}`, each pair asked in both orders: tuned wins {judge['tuned_wins']}, base wins "
            f"{judge['base_wins']}, ties {judge['ties']} of {judge['examples']} (tuned win rate "
            f"{judge['tuned_win_rate']:.0%}; the judge gave the same verdict in both orders "
            f"{judge['position_consistency']:.0%} of the time).")))
    regression = metrics.get("regression")
    if regression:
        text = (f"{regression['tuned_failed']} of {regression['prompts']} prompts the base handled well now score "
                f"below {regression['min_score']} on `{regression['metric']}`")
        if "base_failed" in regression:
            text += f" (the base itself scores below it on {regression['base_failed']})"
        text += "."
        for f in regression["failures"][:20]:
            prompt = f["prompt"][-1]["content"] if f["prompt"] else ""
            text += (f"\n\n- **#{f['index']}** {prompt[:200]!r}\n  - reference: `{f['reference'][:200]}`"
                     f"\n  - tuned: `{f['tuned_output'][:200]}`")
        sections.append(("Regressions", text))
    if metrics.get("forgetting"):
        from tunesmith.eval.forgetting import markdown as forgetting_markdown

        sections.append(("Forgetting", forgetting_markdown(metrics["forgetting"])))
    harness = metrics.get("lm_eval")
    if harness:
        lines = ["| task | metric | " + " | ".join(harness.keys()) + " |", "|---|---|" + "---|" * len(harness)]
        first = next(iter(harness.values()))
        for task, values in first.items():
            for name in values:
                cells = [_fmt(harness[m].get(task, {}).get(name)) for m in harness]
                lines.append(f"| {task} | {name} | " + " | ".join(cells) + " |")
        sections.append(("lm-evaluation-harness", "\n".join(lines)))
    return sections


def write_report(out: Path, metrics: dict[str, Any], rows: Sequence[MetricRow], samples: Sequence[dict[str, Any]],
                 lengths: dict[str, list[int]]) -> list[Path]:
    """Write every report file into `out`; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    path = out / "metrics.json"
    atomic_write_text(path, json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    written.append(path)
    path = out / "samples.jsonl"
    atomic_write_text(path, "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    written.append(path)
    written += write_charts(out, rows, lengths, metrics.get("win_rate"))

    title = f"Evaluation of {metrics['model']}"
    intro = (f"{metrics['examples']} examples from `{metrics['data']}`; task scored as "
             f"**{metrics['task']['kind']}** (per-example score: `{metrics['task']['primary']}`).")
    md = [f"# {title}", "", intro, "", markdown_table(rows), "", "![metrics](metrics.png)", "",
          "![output lengths](lengths.png)", ""]
    for heading, body in _sections(metrics):
        md += [f"## {heading}", "", body, ""]
    md += ["## Samples", ""]
    for s in samples[:5]:
        md += [f"**#{s['index']}** reference: `{s['reference'][:300]}`", f"- tuned: `{s['tuned_output'][:300]}`"]
        if "base_output" in s:
            md.append(f"- base: `{s['base_output'][:300]}`")
        md.append("")
    path = out / "report.md"
    atomic_write_text(path, "\n".join(md))
    written.append(path)

    header, body = _table_rows(rows)
    table = ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
             + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in body)
             + "</table>")
    parts = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(intro)}</p>", table,
             '<p><img src="metrics.png" alt="metrics"></p>', '<p><img src="lengths.png" alt="output lengths"></p>']
    for heading, body_md in _sections(metrics):
        text = body_md.split("\n\n![")[0]
        parts.append(f"<h2>{html.escape(heading)}</h2><pre>{html.escape(text)}</pre>")
        if heading == "Per-example winner":
            parts.append('<p><img src="wins.png" alt="wins"></p>')
    samples_html = "".join(
        f"<tr><td>{s['index']}</td><td>{html.escape(s['reference'][:300])}</td>"
        f"<td>{html.escape(s['tuned_output'][:300])}</td><td>{html.escape(s.get('base_output', '')[:300])}</td></tr>"
        for s in samples[:20])
    parts.append("<h2>Samples</h2><table><tr><th>#</th><th>reference</th><th>tuned</th><th>base</th></tr>"
                 f"{samples_html}</table>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;"
             "vertical-align:top}img{max-width:100%}pre{white-space:pre-wrap}")
    page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
    path = out / "report.html"
    atomic_write_text(path, page)
    written.append(path)
    return written


__all__ = ["markdown_table", "write_charts", "write_report"]
