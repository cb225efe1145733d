"""The promotion gate: the candidate and the version in production, evaluated on the same set.

Both versions go through the eval stage (`tunesmith.eval.run`) on the gate set, and on the
regression prompts when given. The candidate is refused when a metric is worse than production's
by more than the thresholds (an absolute drop for scores, a ratio for perplexity), or when it
fails a regression prompt that production passes. The verdict, with every metric side by side,
is what `models promote --gate` prints and what the alias history records.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from tunesmith.eval.metrics import LOWER_IS_BETTER, NEUTRAL
from tunesmith.registry.aliases import Route
from tunesmith.registry.store import ModelVersion, Registry, RegistryError

# Scores the eval stage reports on a 0-100 scale: the drop threshold (a fraction) scales with them.
PERCENT_SCALE = {"bleu", "chrf", "rouge_l"}


class GateRefused(RegistryError):
    """The candidate scored worse than production beyond the gate's thresholds."""


@dataclass(frozen=True)
class GateThresholds:
    max_drop: float = 0.02  # largest allowed fall of a score (accuracy, exact match, chrF/100...)
    max_perplexity_ratio: float = 1.10  # candidate perplexity / production perplexity
    ignore: tuple[str, ...] = ()  # metrics shown but not gated on


def compare(current: Optional[dict[str, float]], candidate: dict[str, float],
            thresholds: GateThresholds = GateThresholds()) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of (metric, production, candidate, delta, verdict) and the reasons to refuse."""
    rows, failures = [], []
    for name, value in candidate.items():
        before = None if current is None else current.get(name)
        verdict = "ok"
        if before is not None and name not in NEUTRAL and name not in thresholds.ignore and isinstance(value, (int, float)):
            if name in LOWER_IS_BETTER:
                if before > 0 and value / before > thresholds.max_perplexity_ratio:
                    verdict = "worse"
                    failures.append(f"{name} {before:.4g} -> {value:.4g} (more than x{thresholds.max_perplexity_ratio})")
            elif before - value > thresholds.max_drop * (100 if name in PERCENT_SCALE else 1):
                verdict = "worse"
                failures.append(f"{name} {before:.4g} -> {value:.4g} (drop over {thresholds.max_drop:.0%})")
        rows.append({"metric": name, "production": before, "candidate": value,
                     "delta": None if before is None else value - before, "verdict": verdict})
    return rows, failures


def broken_regressions(current: Optional[dict[str, Any]], candidate: Optional[dict[str, Any]]) -> list[int]:
    """Indexes of regression prompts the candidate fails and production passes."""
    if candidate is None:
        return []
    failed = {f["index"] for f in candidate.get("failures", [])}
    already = {f["index"] for f in (current or {}).get("failures", [])}
    return sorted(failed - already)


def _eval_stage(version: ModelVersion, data: Path, regression: Optional[Path], out: Path) -> dict[str, Any]:
    from tunesmith.eval.config import EvalConfig
    from tunesmith.eval.run import run

    cfg = EvalConfig(model=version.run_dir, data=data, out=out, regression=regression)
    return run(cfg, say=lambda _: None).metrics


def _table(rows: list[dict[str, Any]], regression_broken: list[int], ref: str, against: str) -> str:
    def fmt(value):
        return "-" if value is None else f"{value:.4g}"

    lines = [f"gate: {ref} against {against}", f"{'metric':<24}{'production':>12}{'candidate':>12}{'delta':>10}  verdict"]
    for r in rows:
        delta = "-" if r["delta"] is None else f"{r['delta']:+.4g}"
        lines.append(f"{r['metric']:<24}{fmt(r['production']):>12}{fmt(r['candidate']):>12}{delta:>10}  {r['verdict']}")
    if regression_broken:
        lines.append(f"regression prompts the candidate breaks: {regression_broken}")
    return "\n".join(lines)


def run_gate(registry: Registry, candidate: ModelVersion, current: Optional[Route], data: Path, *,
             regression: Optional[Path] = None, thresholds: GateThresholds = GateThresholds(),
             evaluate: Optional[Callable[..., dict[str, Any]]] = None) -> dict[str, Any]:
    """Evaluate both versions and decide. `evaluate(version, data, regression, out)` returns the
    eval stage's metrics.json content (a parameter so the decision can be tested on its own)."""
    if not Path(data).is_file():
        raise RegistryError(f"gate set {data} does not exist", hint="pass an eval JSONL file to --gate")
    evaluate = evaluate or _eval_stage
    production = registry.get(f"{current.name}@{current.version}") if current is not None else None
    with tempfile.TemporaryDirectory(prefix="tunesmith-gate-") as tmp:
        cand = evaluate(candidate, Path(data), regression, Path(tmp) / "candidate")
        prod = evaluate(production, Path(data), regression, Path(tmp) / "production") \
            if production is not None and production.version != candidate.version else None
    rows, failures = compare(prod["tuned"] if prod else None, cand["tuned"], thresholds)
    broken = broken_regressions(prod.get("regression") if prod else None, cand.get("regression"))
    if broken:
        failures.append(f"breaks {len(broken)} regression prompt(s) production passes: {broken}")
    against = production.ref if production is not None else "nothing (no version in production)"
    return {"passed": not failures, "failures": failures, "candidate": candidate.ref,
            "production": production.ref if production is not None else None, "rows": rows,
            "regression_broken": broken, "thresholds": thresholds.__dict__,
            "table": _table(rows, broken, candidate.ref, against)}
