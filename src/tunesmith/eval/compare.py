"""Base versus tuned: every metric side by side with its delta, per-example wins, regressions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from tunesmith.eval.metrics import LOWER_IS_BETTER, NEUTRAL, ExampleScores, TaskSpec

_TIE_TOLERANCE = 1e-9


@dataclass
class MetricRow:
    name: str
    base: float | None
    tuned: float | None

    @property
    def delta(self) -> float | None:
        if self.base is None or self.tuned is None:
            return None
        return self.tuned - self.base

    @property
    def better(self) -> str | None:
        """"tuned", "base" or "same" by the metric's direction; None for neutral metrics."""
        if self.delta is None or self.name in NEUTRAL:
            return None
        if abs(self.delta) <= _TIE_TOLERANCE:
            return "same"
        improved = self.delta < 0 if self.name in LOWER_IS_BETTER else self.delta > 0
        return "tuned" if improved else "base"

    def as_dict(self) -> dict[str, Any]:
        return {"base": self.base, "tuned": self.tuned, "delta": self.delta, "better": self.better}


def side_by_side(base: dict[str, float], tuned: dict[str, float]) -> list[MetricRow]:
    names = list(dict.fromkeys([*tuned, *base]))
    return [MetricRow(name, base.get(name), tuned.get(name)) for name in names]


def winner(base: ExampleScores, tuned: ExampleScores, task: TaskSpec) -> str:
    """Which output scores better on the task's primary per-example score: "tuned", "base" or "tie"."""
    b, t = base.primary(task), tuned.primary(task)
    if abs(t - b) <= _TIE_TOLERANCE:
        return "tie"
    return "tuned" if t > b else "base"


def win_rate(winners: Sequence[str], task: TaskSpec) -> dict[str, Any]:
    n = len(winners)
    counts = {k: sum(w == k for w in winners) for k in ("tuned", "base", "tie")}
    return {
        "metric": task.primary, "examples": n, **{f"{k}_wins" if k != "tie" else "ties": v for k, v in counts.items()},
        "tuned_win_rate": counts["tuned"] / n if n else 0.0,
        "base_win_rate": counts["base"] / n if n else 0.0,
        "tie_rate": counts["tie"] / n if n else 0.0,
    }


def regressions(prompts: Sequence[Any], references: Sequence[str], tuned_outputs: Sequence[str],
                tuned: Sequence[ExampleScores], task: TaskSpec, min_score: float,
                base_outputs: Sequence[str] | None = None, base: Sequence[ExampleScores] | None = None,
                ) -> dict[str, Any]:
    """Prompts from the regression file that the tuned model now fails (score below `min_score`).

    The file lists prompts the base handled well; when the base was run too, its scores are
    reported beside, so a prompt the base also fails is visible as a bad regression entry rather
    than a lost ability.
    """
    failures = []
    for i, (prompt, ref, out, s) in enumerate(zip(prompts, references, tuned_outputs, tuned)):
        if s.primary(task) >= min_score:
            continue
        entry: dict[str, Any] = {"index": i, "prompt": prompt, "reference": ref, "tuned_output": out,
                                 "tuned_score": s.primary(task)}
        if base is not None and base_outputs is not None:
            entry["base_output"] = base_outputs[i]
            entry["base_score"] = base[i].primary(task)
        failures.append(entry)
    summary: dict[str, Any] = {"metric": task.primary, "min_score": min_score, "prompts": len(tuned),
                               "tuned_failed": len(failures), "failures": failures}
    if base is not None:
        summary["base_failed"] = sum(s.primary(task) < min_score for s in base)
    return summary


__all__ = ["MetricRow", "regressions", "side_by_side", "win_rate", "winner"]
