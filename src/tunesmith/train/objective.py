"""What a training objective supplies to the shared loop in `tunesmith.train.run`.

The loop (setup -> steps -> save, checkpoints, resume, divergence guard, logging) is the same
for every objective; an objective says how rows become examples, how examples become
micro-batches, and what one micro-batch's loss is. Accumulation stays exact because each
micro-batch's loss is divided by normalisers summed over the whole optimiser step (every
micro-batch, every process) before backward: the update equals one large batch's.
"""

from __future__ import annotations

from typing import Any, Protocol


class Objective(Protocol):
    #: the `objective` setting this implements (sft, dpo, ...).
    name: str
    #: the metric early stopping and `best_val_loss` follow.
    val_key: str

    def tokenize(self, rows: list[dict[str, Any]], tokenizer, split: str):
        """Rows of the prepared data -> a tokenised set with `examples`, `skipped`, `notes`."""

    def batch_plan(self, data, dist, pad_id: int, flatten: bool):
        """The deterministic plan: `steps_per_epoch`, `total_steps`, `micro_batches_for_step(step)`."""

    def eval_batches(self, data, dist, pad_id: int, flatten: bool) -> list:
        """Validation micro-batches, each rank its share."""

    def normalisers(self, batches: list) -> dict[str, float]:
        """This process's share of the step's normalisers (summed over processes by the loop);
        always holds `tokens`, the tokens that carry loss."""

    def loss(self, model, batch, norms: dict[str, float], device: str) -> tuple[Any, dict[str, float]]:
        """(loss to back-propagate, already divided by the step normalisers; summable statistics)."""

    def summarise(self, sums: dict[str, float], norms: dict[str, float]) -> dict[str, float]:
        """Statistics summed over a step or the validation set -> the logged figures (with `loss`)."""
