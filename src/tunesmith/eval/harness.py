"""Optional lm-evaluation-harness tasks, to catch general ability lost in fine-tuning.

lm-eval is an optional extra (`pip install lm-eval`); tunesmith hands it the already loaded model
object, so the tasks see exactly the weights (and adapter) that were evaluated above. Its task
data comes from the Hugging Face hub, so an offline machine needs the datasets cached beforehand.
"""

from __future__ import annotations

from typing import Any, Sequence

from tunesmith.errors import ConfigError


def lm_eval_available() -> bool:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return False
    return True


def run_lm_eval(model, tokenizer, tasks: Sequence[str], *, limit: int | None, batch_size: int) -> dict[str, Any]:
    """Numeric results per task, e.g. {"hellaswag": {"acc,none": 0.31, ...}}."""
    if not lm_eval_available():
        raise ConfigError(
            "--lm-eval needs lm-evaluation-harness, which is not installed",
            hint="pip install lm-eval (its task datasets download from the Hugging Face hub on first use)",
        )
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    wrapped = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    try:
        output = lm_eval.simple_evaluate(model=wrapped, tasks=list(tasks), limit=limit)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"lm-eval could not run tasks {', '.join(tasks)}: {exc}",
                          hint="`lm-eval ls tasks` lists the task names") from None
    results = (output or {}).get("results", {})
    return {task: {name: value for name, value in metrics.items() if isinstance(value, (int, float))}
            for task, metrics in results.items()}


__all__ = ["lm_eval_available", "run_lm_eval"]
