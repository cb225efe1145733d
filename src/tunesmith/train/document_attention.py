"""Attention per example for packed micro-batches on CPU.

A packed micro-batch holds several examples, and none may attend to another. transformers
enforces that with a block-diagonal mask, and torch's CPU attention kernel computes every score
of the masked square: for rows of 256 tokens holding two or three examples, about three times
the work the examples need, and on one flattened sequence of 1,024 tokens about twelve times.

`DocumentCausalAttention` runs torch's CPU flash-attention kernel once per example, causal, on
views of the query, key and value (no copies, no mask), writes each example's output into one
tensor in the layout transformers' attention returns, and in the backward pass calls the
kernel's backward per example with the log-sum-exp the forward kept. Each example's numbers are
those of the kernel on that example alone; against the masked square they differ by float
rounding only (the kernel's blocks and its masked-score sums fall differently).

The boundaries come from the `cu_seq_lens_q`/`cu_seq_lens_k` that `PackedCollator` adds to a
flattened batch (the same arguments varlen flash attention reads on GPUs).
`use_document_attention` wraps transformers' "sdpa" attention so that a call carrying them, on
CPU, with nothing the per-example kernel cannot reproduce (attention dropout, a sliding window,
logit soft-capping, attention sinks, a position bias), runs per example; every other call,
inference and generation included, goes to transformers' own function unchanged, with the
block-diagonal mask transformers builds from the restarting `position_ids`.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from tunesmith.models.logits import inner_causal_lm

_OPS = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_BACKWARD_OPS = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
_WRAPPED = "_tunesmith_document_attention"
# keyword arguments that change what attention computes; per-example causal attention reproduces
# none of them, so a call with any of them set keeps transformers' path (`cache`: transformers'
# paged continuous batching, which also passes cu_seq_lens, attends to cached keys)
_UNSUPPORTED = ("sliding_window", "softcap", "s_aux", "position_bias", "cache")


class DocumentCausalAttention(torch.autograd.Function):
    """Causal attention within each `(start, end)` span of one flattened sequence.

    query (1, heads, length, dim), key and value (1, kv_heads, length, dim), kv_heads dividing
    heads (grouped-query attention is the kernel's own); returns (1, length, heads, dim)."""

    @staticmethod
    def forward(ctx, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                spans: list[tuple[int, int]], scale: Optional[float]) -> torch.Tensor:
        batch, heads, length, dim = query.shape
        out = query.new_empty(batch, length, heads, dim)
        logsumexp = None
        for start, end in spans:
            part, part_lse = _OPS(query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
                                  0.0, True, scale=scale)
            out[:, start:end].copy_(part.transpose(1, 2))
            if logsumexp is None:  # its dtype is the kernel's accumulation type
                logsumexp = part_lse.new_empty(batch, heads, length)
            logsumexp[:, :, start:end] = part_lse
        ctx.spans, ctx.scale = spans, scale
        ctx.save_for_backward(query, key, value, out, logsumexp)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        query, key, value, out, logsumexp = ctx.saved_tensors
        grads = [torch.empty(t.shape, dtype=t.dtype) for t in (query, key, value)]
        for start, end in ctx.spans:
            parts = _BACKWARD_OPS(grad_out[:, start:end].transpose(1, 2), query[:, :, start:end],
                                  key[:, :, start:end], value[:, :, start:end], out[:, start:end].transpose(1, 2),
                                  logsumexp[:, :, start:end], 0.0, True, scale=ctx.scale)
            for grad, part in zip(grads, parts):
                grad[:, :, start:end] = part
        return grads[0], grads[1], grads[2], None, None


def document_spans(cu_seq_lens: torch.Tensor) -> list[tuple[int, int]]:
    bounds = cu_seq_lens.tolist()
    return [(start, end) for start, end in zip(bounds, bounds[1:]) if end > start]


def runs_per_document(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout: float,
                      kwargs: dict[str, Any]) -> bool:
    """Whether this attention call can run per example: a flattened CPU batch with its boundaries,
    and nothing set that per-example causal attention would not compute."""
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if _OPS is None or _BACKWARD_OPS is None or not isinstance(cu_q, torch.Tensor):
        return False
    if cu_k is not None and cu_k is not cu_q and not torch.equal(cu_k, cu_q):
        return False
    if query.device.type != "cpu" or dropout or not getattr(module, "is_causal", True):
        return False
    if any(kwargs.get(name) is not None for name in _UNSUPPORTED):
        return False
    length = query.shape[2]
    return (query.shape[0] == 1 and key.shape[2] == length and value.shape[2] == length
            and query.shape[-1] == key.shape[-1] == value.shape[-1] and query.shape[1] % key.shape[1] == 0
            and int(cu_q[0]) == 0 and int(cu_q[-1]) == length)


def _wrap(original):
    def sdpa_or_per_document(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: Optional[float] = None, is_causal: Optional[bool] = None, **kwargs):
        if is_causal is not False and runs_per_document(module, query, key, value, dropout, kwargs):
            spans = document_spans(kwargs["cu_seq_lens_q"])
            return DocumentCausalAttention.apply(query, key, value, spans, scaling), None
        return original(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                        is_causal=is_causal, **kwargs)

    setattr(sdpa_or_per_document, _WRAPPED, original)
    return sdpa_or_per_document


def use_document_attention() -> bool:
    """Route flattened CPU batches through per-example attention; idempotent. Returns whether this
    torch and transformers have what it needs (otherwise nothing changes)."""
    if _OPS is None or _BACKWARD_OPS is None:
        return False
    try:
        from transformers.modeling_utils import AttentionInterface
    except ImportError:
        return False
    current = AttentionInterface._global_mapping.get("sdpa")
    if current is None:
        return False
    if getattr(current, _WRAPPED, None) is None:
        AttentionInterface.register("sdpa", _wrap(current))
    return True


def attends_per_document(model, device: str) -> bool:
    """Whether training `model` on `device` should use flattened packed batches with per-example
    attention: CPU, transformers' sdpa attention, and a model that passes the varlen boundaries
    down to its attention (the models that support varlen flash attention do). Installs the
    routing when it answers yes."""
    if not str(device).startswith("cpu"):
        return False
    base = inner_causal_lm(model)
    config = getattr(base, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or not getattr(base, "_supports_flash_attn", False):
        return False
    return use_document_attention()
