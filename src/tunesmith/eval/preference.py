"""Held-out preference accuracy: `tunesmith eval --preference FILE`.

For every pair of FILE (any preference form `tunesmith data prepare` reads), each model scores
the chosen and the rejected completion by their summed log-probability, over exactly the tokens
training gives loss to (the completion and its end-of-turn token, through the chat template).

- `preference_accuracy`: share of pairs whose chosen completion gets the higher log-probability;
  `preference_margin`: the mean of log p(chosen) - log p(rejected).
- For the tuned model, also the implicit reward DPO trains (log-ratio against the base):
  `reward_accuracy`, the share of pairs with r(chosen) > r(rejected), r = log p_tuned - log p_base,
  and `reward_margin`, the mean of r(chosen) - r(rejected) (without DPO's beta).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tunesmith.data import formats
from tunesmith.data.rules import Reject
from tunesmith.errors import DataError


def read_pairs(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"preference data not found: {path}",
                        hint="pass a JSONL file of prompt/chosen/rejected rows (or another preference form)")
    raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if formats.detect(raw[:formats.DETECT_ROWS], str(path)) != "preference":
        raise DataError(f"{path} does not hold preference pairs", where=str(path),
                        hint="rows need prompt/chosen/rejected, or input/preferred_output/non_preferred_output")
    pairs = []
    for number, obj in enumerate(raw, 1):
        try:
            pairs.append(formats.normalise(obj, "preference")[0])
        except Reject as exc:
            raise DataError(f"not a preference pair: {exc}", where=f"{path}:{number}",
                            hint="run `tunesmith data inspect` on the file") from None
        if limit and len(pairs) >= limit:
            break
    return pairs


def tokenize_pairs(tokenizer, pairs: list[dict[str, Any]], max_length: int = 4096) -> list[dict[str, Any]]:
    from tunesmith.train.pairs import tokenize_completion

    return [{"chosen": tokenize_completion(tokenizer, p["prompt"], p["chosen"], max_length, p.get("tools")),
             "rejected": tokenize_completion(tokenizer, p["prompt"], p["rejected"], max_length, p.get("tools")),
             "index": i} for i, p in enumerate(pairs)]


@torch.no_grad()
def pair_logps(model, tokenizer, examples: list[dict[str, Any]], batch_size: int = 8) -> torch.Tensor:
    """(pairs, 2) summed log-probabilities of chosen and rejected completions."""
    from tunesmith.train.logprobs import sequence_logps
    from tunesmith.train.pairs import make_pair_batch

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    for i in range(0, len(examples), batch_size):
        batch = make_pair_batch(examples[i:i + batch_size], pad)
        logps, _ = sequence_logps(model, batch.model_inputs(str(device)))
        n = batch.num_examples
        out.append(torch.stack([logps[:n], logps[n:]], dim=1).double().cpu())
    return torch.cat(out)


def summarise(scores: torch.Tensor, base: torch.Tensor | None = None) -> dict[str, float]:
    margin = scores[:, 0] - scores[:, 1]
    figures = {"preference_accuracy": float((margin > 0).double().mean()),
               "preference_margin": float(margin.mean())}
    if base is not None:
        reward = (scores - base)
        reward_margin = reward[:, 0] - reward[:, 1]
        figures["reward_accuracy"] = float((reward_margin > 0).double().mean())
        figures["reward_margin"] = float(reward_margin.mean())
    return figures


def evaluate(models, path: Path, batch_size: int, compare_base: bool, limit: int | None = None,
             say=print) -> dict[str, dict[str, float]]:
    """{"tuned": figures, "base": figures (with compare_base)} for the pairs of `path`."""
    pairs = read_pairs(path, limit)
    examples = tokenize_pairs(models.tokenizer, pairs)
    say(f"preference: scoring {len(examples)} pairs from {path}")
    tuned = pair_logps(models.tuned, models.tokenizer, examples, batch_size)
    if not compare_base:
        return {"tuned": summarise(tuned)}
    with models.base() as base_model:
        base = pair_logps(base_model, models.tokenizer, examples, batch_size)
    # The base's implicit reward against itself is 0 for every pair (accuracy 0, margin 0).
    return {"tuned": summarise(tuned, base), "base": summarise(base, base)}
