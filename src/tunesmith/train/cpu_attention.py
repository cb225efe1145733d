"""Grouped-query attention without repeated keys and values, for training on CPU.

Models with fewer key/value heads than query heads (SmolLM2: 9 query heads, 3 key/value heads)
reach transformers' SDPA attention, which repeats every key and value head for each query head
it serves (`repeat_kv`) unless no attention mask is given, because CUDA's fused kernels need that.
Packed rows always carry a mask, so on CPU each layer copied its keys and values three times
over and autograd summed the copies' gradients back. torch's CPU attention kernel takes the
grouped heads directly (`enable_gqa=True`): the forward output is bit-identical, the key and
value gradients differ only in the order of a sum (about 1e-7), and a SmolLM2 layer's attention
forward and backward take about a fifth less time.

`use_grouped_attention_on_cpu` makes transformers choose that path for CPU tensors while
gradients are being recorded (training); inference, and every other device, keep transformers'
own choice, so generation and serving see the same numbers as before.
"""

from __future__ import annotations

import torch

_ORIGINAL = "_tunesmith_original_use_gqa_in_sdpa"


def use_grouped_attention_on_cpu() -> bool:
    """Route CPU training through SDPA's grouped-query path; idempotent. Returns whether this
    transformers release has the switch (otherwise nothing changes)."""
    try:
        from transformers.integrations import sdpa_attention
    except ImportError:
        return False
    current = getattr(sdpa_attention, "use_gqa_in_sdpa", None)
    if current is None:
        return False
    if getattr(sdpa_attention, _ORIGINAL, None) is not None:
        return True
    original = current

    def use_gqa_in_sdpa(attention_mask, key, value):
        if key.device.type == "cpu" and torch.is_grad_enabled() and key.shape[-1] == value.shape[-1]:
            return True
        return original(attention_mask, key, value)

    setattr(sdpa_attention, _ORIGINAL, original)
    sdpa_attention.use_gqa_in_sdpa = use_gqa_in_sdpa
    return True
