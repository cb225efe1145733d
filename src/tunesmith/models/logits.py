"""Facts about a causal LM's output head that training, evaluation and the memory planner share:
which positions need logits, whether the model can be asked for logits at those positions only,
and which config fields change logits after the head.

A causal LM's forward normally projects every position onto the vocabulary; the loss and the
answer perplexity then ignore positions whose next token carries no label. transformers' boolean
`logits_to_keep` lets the caller ask for the trained positions only, which skips that part of
the largest matrix product and of the softmax.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from tunesmith.chat.masking import IGNORE_INDEX

if TYPE_CHECKING:  # torch is imported where a tensor is handled: the CLI and the planner import this module
    import torch

# Config fields of transformers 5.23 models that change logits after the output head (Gemma 2/3
# soft-capping, Cohere's logit scale, Granite's logits scaling, Falcon-H1's head multiplier,
# Inkling's truncated vocabulary ...). Training fuses the output head with the loss only without
# them (`tunesmith.train.loss`), and the planner counts the unfused head for them.
LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_softcapping", "softcap", "logit_scale",
                        "logits_scaling", "output_multiplier", "lm_head_multiplier", "unpadded_vocab_size")


def trained_positions(labels: "torch.Tensor") -> "torch.Tensor":
    """Boolean (batch, length) mask of the positions whose next token carries loss."""
    import torch

    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


def inner_causal_lm(model):
    """The transformers model inside DDP / DeepSpeed (`.module`) and PEFT (`get_base_model`) wrappers."""
    import torch

    if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def takes_boolean_logits_to_keep(model) -> bool:
    """Whether the model's forward slices hidden states with transformers' `slice_logits_to_keep`,
    which takes a boolean mask. Earlier transformers releases (5.17 among them), and remote code
    copied from them, index `hidden_states[:, logits_to_keep, :]`, which a mask breaks."""
    owner = next((c for c in type(inner_causal_lm(model)).__mro__ if "forward" in c.__dict__), object)
    module = sys.modules.get(owner.__module__)
    return owner.__module__.startswith("transformers.models.") and hasattr(module, "slice_logits_to_keep")
