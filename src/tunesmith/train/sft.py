"""Supervised fine-tuning: `objective: sft` (the default) and `tunesmith.train.sft.run(cfg)`.

Conversations are tokenised with their loss mask (assistant turns and their end-of-turn token
only, unless `train_on_inputs`), plain `text` rows with loss on every token; micro-batches are
packed or padded rows; the loss is next-token cross-entropy summed over trained tokens and
divided by the trained tokens of the whole optimiser step. The run itself (setup -> loop ->
save) is `tunesmith.train.run`.
"""

from __future__ import annotations

from typing import Any

from tunesmith.train.config import TrainSettings
from tunesmith.train import batching
from tunesmith.train.loss import causal_lm_loss_and_hits
from tunesmith.train.run import TrainResult, run

__all__ = ["SupervisedObjective", "TrainResult", "run"]


class SupervisedObjective:
    name = "sft"
    val_key = "loss"

    def __init__(self, settings: TrainSettings):
        self.settings = settings

    def tokenize(self, rows: list[dict[str, Any]], tokenizer, split: str) -> batching.TokenizedSet:
        return batching.tokenize_rows(rows, tokenizer, self.settings, split)

    def batch_plan(self, data, dist, pad_id: int, flatten: bool) -> batching.BatchPlan:
        return batching.BatchPlan(data, self.settings, dist, pad_id=pad_id, flatten=flatten)

    def eval_batches(self, data, dist, pad_id: int, flatten: bool) -> list[batching.Batch]:
        return batching.eval_batches(data, self.settings, pad_id, dist, flatten)

    def normalisers(self, batches: list[batching.Batch]) -> dict[str, float]:
        return {"tokens": float(sum(b.num_trained_tokens for b in batches))}

    def loss(self, model, batch: batching.Batch, norms: dict[str, float], device: str):
        tokens = max(norms["tokens"], 1.0)
        loss, hits = causal_lm_loss_and_hits(model, batch.model_inputs(device), tokens)
        return loss, {"loss": loss.item() * tokens, "hits": float(hits)}

    def summarise(self, sums: dict[str, float], norms: dict[str, float]) -> dict[str, float]:
        tokens = max(norms["tokens"], 1.0)
        # mean_token_accuracy: the share of trained tokens whose argmax prediction is the label.
        return {"loss": sums.get("loss", 0.0) / tokens, "mean_token_accuracy": sums.get("hits", 0.0) / tokens}
