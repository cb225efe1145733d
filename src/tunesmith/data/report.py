"""The human side of `data prepare`: a length histogram (PNG) and `report.md` embedding it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tunesmith.data.rules import RULES, Finding

HISTOGRAM = "length_histogram.png"


def length_summary(lengths: Sequence[int]) -> dict[str, float]:
    if not len(lengths):
        return {"count": 0}
    values = np.asarray(lengths, dtype=np.int64)
    p50, p90, p99 = np.percentile(values, [50, 90, 99], method="nearest")
    return {"count": int(values.size), "min": int(values.min()), "mean": round(float(values.mean()), 1),
            "p50": int(p50), "p90": int(p90), "p99": int(p99), "max": int(values.max()),
            "total": int(values.sum())}


def write_histogram(lengths: Sequence[int], unit: str, path: Path, *, limit: int | None = None) -> None:
    """A PNG histogram of example lengths, with the sequence limit drawn when there is one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    values = np.asarray(lengths, dtype=np.int64)
    title = f"{values.size:,} kept examples"
    if values.size:
        ax.hist(values, bins=min(50, max(1, int(np.unique(values).size))), color="#4477aa")
        ax.axvline(float(np.percentile(values, 50)), color="#228833", linestyle="--", label="median")
    if limit is not None:
        # A limit far right of every example would squash the bars into a sliver; name it instead.
        if values.size and limit > 1.5 * values.max():
            title += f", all within max_seq_len {limit:,}"
        else:
            ax.axvline(limit, color="#cc3311", label=f"max_seq_len {limit:,}")
    ax.set_xlabel(f"example length ({unit})")
    ax.set_ylabel("examples")
    ax.set_title(title)
    if values.size:
        ax.legend(loc="upper right")
    fig.tight_layout()
    # No creation date or version in the file, so the same data gives the same bytes.
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def render(inputs: list[dict[str, Any]], details: dict[str, Any], examples: dict[str, list[Finding]]) -> str:
    """report.md from the described inputs, the manifest's numbers and a few example findings per rule."""
    counts = details["counts"]
    lines = ["# Data preparation report", ""]
    splits = counts["splits"]
    lines += [f"{counts['kept']:,} of {counts['read']:,} examples kept "
              f"(train {splits['train']:,}, val {splits['val']:,}, test {splits['test']:,}); "
              f"{sum(counts['rejected'].values()):,} rejected, {counts['truncated']:,} truncated, "
              f"{counts['examples_with_pii']:,} with personal data redacted.", ""]
    lines += ["## Inputs", ""]
    lines += _table(["file", "format", "records", "kept", "rejected", "sha256"],
                    [(i["path"], i["format"], i["records"], i["kept"], i["rejected"], f"`{i['sha256'][:16]}`")
                     for i in inputs])
    ignored = [(i["path"], field, n) for i in inputs for field, n in i["ignored_fields"].items()]
    if ignored:
        lines += ["", "Fields the format does not use (not carried into the dataset):", ""]
        lines += _table(["file", "field", "times"], ignored)
    lines += ["", "## Examples left after each step", ""]
    lines += _table(["step", "examples"], [(step, f"{n:,}") for step, n in counts["funnel"]])
    lines += ["", "## Rejected examples", ""]
    if counts["rejected"]:
        lines += ["Every rejected example is in `rejected.jsonl` with its rule, source file and line.", ""]
        rows = []
        for rule, n in counts["rejected"].items():
            first = ", ".join(f"`{f.where}`" for f in examples.get(rule, [])[:3])
            rows.append((f"`{rule}`", n, RULES[rule].description, RULES[rule].fix, first))
        lines += _table(["rule", "count", "what", "what to do", "first at"], rows)
    else:
        lines += ["None."]
    lines += ["", "## Personal data", ""]
    if counts["pii"]:
        lines += [f"Mode `{details['settings']['pii']}`.", ""]
        lines += _table(["kind", "found"], sorted(counts["pii"].items()))
    else:
        lines += [f"None found (mode `{details['settings']['pii']}`)."]
    length = details["length"]
    lines += ["", f"## Length ({length['unit']})", ""]
    if length["summary"].get("count"):
        summary = length["summary"]
        lines += _table(["min", "mean", "p50", "p90", "p99", "max"],
                        [(summary["min"], summary["mean"], summary["p50"], summary["p90"], summary["p99"], summary["max"])])
    if length["unit"] == "characters":
        lines += ["", "Lengths are in characters; pass `--model` to count tokens through the model's chat template."]
    lines += ["", f"![example lengths]({HISTOGRAM})", ""]
    lines += ["## Outputs", ""]
    rows = [(f"{name}.jsonl", f"{n:,}") for name, n in splits.items()]
    rows.append(("rejected.jsonl", f"{sum(counts['rejected'].values()):,}"))
    lines += _table(["file", "rows"], rows)
    lines += ["", "`manifest.json` holds the SHA-256 of every file written."]
    lines.append("")
    return "\n".join(lines)
