"""Batched decoding that drops finished rows from the batch and its KV cache.

`transformers`' `generate` keeps a row that has produced its stop token in the batch until every
row has finished, feeding it padding: on a batch where one answer runs to `max_new_tokens` and
the others stop early, most of the compute goes to rows whose answer is already known. Here a row
leaves the batch (and the cache: `DynamicCache.batch_select_indices`) at the step it finishes,
so every forward pass computes only rows still generating.

Each row sees exactly the computation `generate` gives it: left-padded prompt, position ids
counted from its first real token (`cumsum(mask) - 1`, as `generate` does), its attention mask
grown by one per step, fp32 logits of the last position. Greedy outputs therefore match
`generate` and one-prompt-at-a-time generation (tests/unit/eval/test_generate_early_stop.py).
The repetition penalty counts the tokens of the row's own prompt and answer, never padding.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Sequence

import torch
from transformers import DynamicCache
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper


@dataclass
class Sampling:
    """How the next token is chosen: greedy (argmax) unless `do_sample`."""

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    generator: torch.Generator | None = None


@dataclass
class DecodedRow:
    tokens: list[int]  # the answer, without its stop token
    stopped: bool  # ended with a stop token rather than at max_new_tokens


@dataclass
class DecodeTrace:
    """Rows computed by each forward pass: the prefill, then one entry per decoding step."""

    rows_per_forward: list[int] = field(default_factory=list)


def _accepts_logits_to_keep(model) -> bool:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def _choose(logits: torch.Tensor, presence: torch.Tensor | None, sampling: Sampling) -> torch.Tensor:
    if presence is not None:
        # Divide positive logits and multiply negative ones by the penalty (the CTRL rule, as
        # transformers' RepetitionPenaltyLogitsProcessor), on tokens the row has seen.
        penalised = torch.where(logits < 0, logits * sampling.repetition_penalty, logits / sampling.repetition_penalty)
        logits = torch.where(presence, penalised, logits)
    if not sampling.do_sample:
        return logits.argmax(dim=-1)
    if sampling.temperature != 1.0:
        logits = TemperatureLogitsWarper(sampling.temperature)(None, logits)
    if sampling.top_k:
        logits = TopKLogitsWarper(sampling.top_k)(None, logits)
    if sampling.top_p < 1.0:
        logits = TopPLogitsWarper(sampling.top_p)(None, logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=sampling.generator).squeeze(1)


@torch.no_grad()
def decode_batch(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    sampling: Sampling | None = None,
    trace: DecodeTrace | None = None,
) -> list[DecodedRow]:
    """Generate for a left-padded batch; a row leaves the batch at the step it stops."""
    sampling = sampling or Sampling()
    rows = input_ids.size(0)
    device = input_ids.device
    stops = torch.tensor(sorted(set(stop_ids)), device=device)
    answers: list[list[int]] = [[] for _ in range(rows)]
    stopped = [False] * rows
    running = torch.arange(rows, device=device)  # original row index of each batch row
    mask = attention_mask.long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # padding gets position 0, as in `generate`
    presence = None  # (rows, vocabulary): tokens each row has seen, for the repetition penalty

    cache = DynamicCache(config=model.config)
    extra = {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}
    step_ids, step_positions = input_ids, positions
    for step in range(max_new_tokens):
        if trace is not None:
            trace.rows_per_forward.append(step_ids.size(0))
        logits = model(input_ids=step_ids, attention_mask=mask, position_ids=step_positions,
                       past_key_values=cache, use_cache=True, **extra).logits[:, -1, :].float()
        if sampling.repetition_penalty != 1.0 and presence is None:
            presence = torch.zeros((rows, logits.size(-1)), dtype=torch.bool, device=device)
            prompt_rows, prompt_cols = mask.nonzero(as_tuple=True)  # real prompt tokens, never padding
            presence[prompt_rows, input_ids[prompt_rows, prompt_cols]] = True
        chosen = _choose(logits, presence, sampling)
        is_stop = torch.isin(chosen, stops)
        for row, token, stop in zip(running.tolist(), chosen.tolist(), is_stop.tolist()):
            if stop:
                stopped[row] = True
            else:
                answers[row].append(token)
        keep = (~is_stop).nonzero().squeeze(1)
        if step == max_new_tokens - 1 or keep.numel() == 0:
            break
        if keep.numel() < running.numel():
            cache.batch_select_indices(keep)
            running, mask, chosen = running[keep], mask[keep], chosen[keep]
            step_positions = step_positions[keep]
            if presence is not None:
                presence = presence[keep]
        if presence is not None:
            presence[torch.arange(chosen.numel(), device=device), chosen] = True
        mask = torch.cat([mask, mask.new_ones((mask.size(0), 1))], dim=1)
        step_positions = step_positions[:, -1:] + 1
        step_ids = chosen.unsqueeze(1)
    return [DecodedRow(tokens=answers[i], stopped=stopped[i]) for i in range(rows)]


__all__ = ["DecodeTrace", "DecodedRow", "Sampling", "decode_batch"]
