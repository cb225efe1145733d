"""Sequence log-probabilities of the labelled tokens of each row, from one forward pass."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from tunesmith.models.logits import takes_boolean_logits_to_keep, trained_positions


def sequence_logps(model, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log p(token) over each row's labelled tokens, number of those tokens), per row.

    `inputs` are model inputs with `labels` (IGNORE_INDEX where no log-probability counts). The
    output head runs only at the positions that predict a labelled token (as in SFT's loss),
    and the log-softmax is taken in float32.
    """
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    keep = trained_positions(labels)
    targets = labels[:, 1:][keep[:, :-1]]
    if takes_boolean_logits_to_keep(model):
        logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits
    else:
        logits = model(**inputs, use_cache=False).logits
    if logits.dim() == 3:  # every position came back
        logits = logits[keep]
    token_logps = -F.cross_entropy(logits.float(), targets, reduction="none")
    rows = keep.nonzero(as_tuple=True)[0]
    sums = torch.zeros(labels.shape[0], dtype=token_logps.dtype, device=token_logps.device)
    sums = sums.index_add(0, rows, token_logps)
    counts = keep.sum(dim=1).to(token_logps.dtype)
    return sums, counts
