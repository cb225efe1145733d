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

from typing import Any

import torch
import torch.nn.functional as F

from tunesmith.chat.masking import IGNORE_INDEX


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
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    keep = trained_positions(labels)
    targets = labels[:, 1:][keep[:, :-1]]
    out = model(**inputs, logits_to_keep=keep)
    logits = out.logits
    if logits.dim() == 3:  # a model whose forward does not take a boolean logits_to_keep
        logits = logits[keep]
    loss = F.cross_entropy(logits.float(), targets, reduction="sum") / num_items
    aux = getattr(out, "aux_loss", None)
    coef = getattr(getattr(_unwrap(model), "config", None), "router_aux_loss_coef", None)
    if aux is not None and coef:
        # Mixture-of-experts load balancing, weighted by this micro-batch's share of the step.
        loss = loss + coef * aux * (targets.numel() / num_items)
    return loss


def _unwrap(model):
    while hasattr(model, "module"):
        model = model.module
    return model
