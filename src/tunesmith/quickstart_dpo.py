"""`tunesmith quickstart --dpo`: DPO after the SFT LoRA, then base vs SFT vs DPO on held-out tickets.

The DPO run continues the quickstart's SFT adapter (`init_from: <out>/train`), so the frozen SFT
adapter is its reference, as users expect after SFT. It trains on the demo preference pairs
(`tunesmith data demo`: the correct JSON against a realistic failure: a wrong field, prose
around the JSON, a missing field, a run-on answer). Only the first `steps x micro-batch` pairs
are written to `<out>/dpo-data/pairs.jsonl`: DPO from an SFT run computes the reference's
log-probabilities of every pair before the first step, so pairs the run never trains on would
only cost time.

The DPO model is evaluated on the same held-out tickets with the same generation settings as the
SFT evaluation, and the three models are put side by side.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tunesmith.eval.config import EvalConfig
from tunesmith.quickstart_config import QuickstartConfig
from tunesmith.train.config import TrainConfig

# The figures DPO after SFT is meant to move on the demo task, in the order of the table.
COMPARED = ("category_accuracy", "priority_accuracy", "field_accuracy", "json_valid", "stop_rate")
_MICRO_BATCH = {True: 8, False: 4}  # pairs per step: embedded model / real model


@dataclass
class DpoFigures:
    steps: int
    pairs: int
    final_loss: float | None
    table: dict[str, dict[str, float | None]]  # metric -> {"base", "sft", "dpo"}
    speed: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "pairs": self.pairs, "final_loss": self.final_loss, "metrics": self.table,
                "generation_speed": self.speed}


def default_steps(cfg: QuickstartConfig, tiny: bool) -> int:
    if cfg.dpo_steps is not None:
        return cfg.dpo_steps
    return 60 if tiny else 20


def write_pairs(source: Path, target: Path, count: int) -> int:
    """The first `count` pairs of `source` into `target`; returns how many were written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(source, encoding="utf-8") as fh, open(target, "w", encoding="utf-8") as out:
        for line in fh:
            if not line.strip():
                continue
            out.write(line if line.endswith("\n") else line + "\n")
            written += 1
            if written >= count:
                break
    return written


def train_dpo(cfg: QuickstartConfig, out: Path, *, tiny: bool, sft_learning_rate: float):
    """DPO on the demo pairs, continuing (and referencing) the SFT adapter in `<out>/train`."""
    from tunesmith.train import run as training

    steps = default_steps(cfg, tiny)
    micro = _MICRO_BATCH[tiny]
    # A validation share of 5% plus the pairs the steps consume.
    pairs = write_pairs(out / "demo-data" / "preference_train.jsonl", out / "dpo-data" / "pairs.jsonl",
                        int(steps * micro / 0.95) + 1)
    train_cfg = TrainConfig.model_validate({
        "model": cfg.model.model_dump(), "data": {"path": [str(out / "dpo-data" / "pairs.jsonl")], "val_ratio": 0.05},
        "method": "lora", "objective": "dpo", "init_from": str(out / "train"), "output_dir": str(out / "dpo"),
        "preference": {"beta": cfg.dpo_beta, "loss_type": "sigmoid"},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        # DPO moves a tuned model, not a base: a tenth of the SFT learning rate unless set.
        "train": {"learning_rate": cfg.dpo_learning_rate or sft_learning_rate / 10, "micro_batch_size": micro,
                  "max_seq_len": cfg.max_seq_len, "log_every": max(1, min(10, steps // 2)), "seed": cfg.seed,
                  "max_steps": steps, "eval_every": max(1, steps // 2)},
    })
    return training.run(train_cfg), pairs


def evaluate_dpo(out: Path, cfg: QuickstartConfig, generation: dict[str, Any],
                 say: Callable[[str], None]) -> dict[str, Any]:
    """The DPO model on the held-out tickets the SFT evaluation used (its base figures are reused)."""
    from tunesmith.eval import run as evaluation

    return evaluation.run(EvalConfig(
        model=str(out / "dpo"), data=out / "demo-data" / "test.jsonl", out=out / "eval-dpo", compare_base=False,
        limit=cfg.eval_limit, json_fields=["category", "priority"], generation=generation,
    ), say=say).metrics


def three_way(sft_metrics: dict[str, Any], dpo_metrics: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    base, sft, dpo = sft_metrics.get("base", {}), sft_metrics["tuned"], dpo_metrics["tuned"]
    return {name: {"base": base.get(name), "sft": sft.get(name), "dpo": dpo.get(name)}
            for name in COMPARED if name in sft or name in dpo}


def markdown(table: dict[str, dict[str, float | None]]) -> str:
    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    lines = ["| metric | base | SFT | SFT + DPO |", "|---|---|---|---|"]
    lines += [f"| {name} | {cell(row['base'])} | {cell(row['sft'])} | {cell(row['dpo'])} |"
              for name, row in table.items()]
    return "\n".join(lines)


def run_stage(cfg: QuickstartConfig, out: Path, *, tiny: bool, sft_learning_rate: float, generation: dict[str, Any],
              sft_metrics: dict[str, Any], say: Callable[[str], None]) -> DpoFigures:
    trained, pairs = train_dpo(cfg, out, tiny=tiny, sft_learning_rate=sft_learning_rate)
    say(f"DPO: {trained.steps} steps on {pairs} pairs; final loss "
        f"{'n/a' if trained.final_loss is None else f'{trained.final_loss:.4f}'}")
    dpo_metrics = evaluate_dpo(out, cfg, generation, say)
    table = three_way(sft_metrics, dpo_metrics)
    figures = DpoFigures(steps=trained.steps, pairs=pairs, final_loss=trained.final_loss, table=table,
                         speed=dpo_metrics.get("generation_speed", {}))
    (out / "eval-dpo" / "three_way.json").write_text(json.dumps(figures.as_dict(), indent=2) + "\n")
    return figures


__all__ = ["COMPARED", "DpoFigures", "markdown", "run_stage", "three_way", "write_pairs"]
