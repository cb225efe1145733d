"""The training loss: next-token cross-entropy on the tokens that carry loss, with the output
head run only at the positions that predict them.

A causal LM's forward normally projects every position onto the vocabulary and the loss then
ignores the masked ones. In supervised fine-tuning most positions are masked (prompts, system
turns, padding): on the demo tickets 61% of the tokens carry no loss. Asking the model for logits
at the trained positions only (transformers' boolean `logits_to_keep`) skips that part of the
largest matrix product and of the softmax, forward and backward, and never materialises the
full (batch, length, vocabulary) logits tensor. The loss is the same sum of per-token
cross-entropies the model's own loss computes, divided by the same token count.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn.functional as F

from tunesmith.chat.masking import IGNORE_INDEX
from tunesmith.train.sharding import unwrap


def trained_positions(labels: torch.Tensor) -> torch.Tensor:
    """Boolean (batch, length) mask of the positions whose next token carries loss."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


def causal_lm_loss(model, inputs: dict[str, Any], num_items: float) -> torch.Tensor:
    """Summed cross-entropy of the trained tokens in `inputs` divided by `num_items`.

    `inputs` are model inputs with `labels` (unshifted, IGNORE_INDEX where no loss), as the
    collators build them. Dividing every micro-batch by the trained tokens of the whole
    optimiser step makes accumulated gradients equal those of one large batch.
    """
    return causal_lm_loss_and_hits(model, inputs, num_items)[0]


def causal_lm_loss_and_hits(model, inputs: dict[str, Any], num_items: float) -> tuple[torch.Tensor, int]:
    """`causal_lm_loss`, and how many trained tokens the model predicts exactly (argmax of the
    logits equals the label): the numerator of the mean token accuracy, read from the logits the
    loss already computed, so it costs no second forward."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    keep = trained_positions(labels)
    targets = labels[:, 1:][keep[:, :-1]]
    if _takes_boolean_logits_to_keep(model):
        out = model(**inputs, logits_to_keep=keep)
    else:
        out = model(**inputs)
    logits = out.logits
    if logits.dim() == 3:  # every position came back
        logits = logits[keep]
    loss = F.cross_entropy(logits.float(), targets, reduction="sum") / num_items
    hits = int((logits.detach().argmax(dim=-1) == targets).sum().item())
    aux = getattr(out, "aux_loss", None)
    coef = _aux_loss_coefficient(model)
    if aux is not None and coef:
        # Mixture-of-experts load balancing, weighted by this micro-batch's share of the step.
        loss = loss + coef * aux * (targets.numel() / num_items)
    return loss, hits


def _causal_lm(model):
    """The transformers model inside DDP / DeepSpeed / PEFT wrappers."""
    model = unwrap(model)
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _takes_boolean_logits_to_keep(model) -> bool:
    """Whether the model's forward slices hidden states with transformers' `slice_logits_to_keep`,
    which takes a boolean mask. Earlier transformers releases (5.17 among them), and remote code
    copied from them, index `hidden_states[:, logits_to_keep, :]`, which a mask breaks."""
    owner = next((c for c in type(_causal_lm(model)).__mro__ if "forward" in c.__dict__), object)
    module = sys.modules.get(owner.__module__)
    return owner.__module__.startswith("transformers.models.") and hasattr(module, "slice_logits_to_keep")


def _aux_loss_coefficient(model) -> float | None:
    """The load-balancing weight the model itself adds to its loss (mixture-of-experts)."""
    inner = _causal_lm(model)
    for name in ("router_aux_loss_coef", "aux_loss_coef"):
        value = getattr(inner, name, None)
        if value is None:
            value = getattr(getattr(inner, "config", None), name, None)
        if isinstance(value, (int, float)):
            return float(value)
    return None
