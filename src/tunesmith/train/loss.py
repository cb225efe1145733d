"""The training loss: next-token cross-entropy on the tokens that carry loss, with the output
head run only at the positions that predict them, in chunks, fused with the cross-entropy.

A causal LM's forward normally projects every position onto the vocabulary and the loss then
ignores the masked ones. In supervised fine-tuning most positions are masked (prompts, system
turns, padding): on the demo tickets 61% of the tokens carry no loss. Asking the model for logits
at the trained positions only (transformers' boolean `logits_to_keep`) skips that part of the
largest matrix product and of the softmax, forward and backward.

Even at the trained positions alone, the logits are the largest tensors of a fine-tuning step
on a real vocabulary: 400 trained positions of SmolLM2 (49,152 tokens) give 75 MiB of fp32
logits, and cross-entropy saves as much again (its log-softmax) for the backward pass, which then
builds their gradients; at 1,000+ positions or a 128k-152k vocabulary (Llama 3, Qwen) this is
gigabytes. So where it is exactly equivalent, the output head and the cross-entropy run together
(`ChunkedHeadCrossEntropy`): the forward pass projects a chunk of positions at a time (about
32 MiB of fp32 logits), keeps each position's logsumexp, target logit and argmax, and discards
the chunk; autograd saves only the hidden states at trained positions (which the head's own
matrix product saves anyway) and one logsumexp per position. The backward pass recomputes each
chunk's logits (one more head matrix product) to form softmax minus one-hot, and from it the
gradients of the hidden states and, when the head is trained (full fine-tuning, or `lm_head` in
`modules_to_save`), of its weight. No (positions, vocabulary) tensor outlives a chunk.

The fused path runs inside the head module's call (its forward is swapped for the fused
function for the duration of one model call), so wrappers that gather sharded weights around a
module's forward (FSDP2, ZeRO-3) and DDP's graph traversal see the head's weight used as usual.
It is taken only when it computes the same thing as the model: the model slices hidden states
with a boolean `logits_to_keep`, the head is a plain `torch.nn.Linear`, and the config has no
logit post-processing (soft-capping, a logit scale or multiplier, a truncated vocabulary). As a
last guard the model must return the head's result unchanged (the same tensor, or the same value
passed through a module hook, as DeepSpeed's); otherwise the step is recomputed through the
model's own logits, with a warning. Either way the loss is the same sum of per-token
cross-entropies the model's own loss computes, divided by the same token count.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from tunesmith.models.logits import LOGIT_POSTPROCESSING, inner_causal_lm, takes_boolean_logits_to_keep, trained_positions

logger = logging.getLogger(__name__)


def causal_lm_loss(model, inputs: dict[str, Any], num_items: float) -> torch.Tensor:
    """Summed cross-entropy of the trained tokens in `inputs` divided by `num_items`.

    `inputs` are model inputs with `labels` (unshifted, IGNORE_INDEX where no loss), as the
    collators build them. Dividing every micro-batch by the trained tokens of the whole
    optimiser step makes accumulated gradients equal those of one large batch.
    """
    return causal_lm_loss_and_hits(model, inputs, num_items)[0]


def causal_lm_loss_and_hits(model, inputs: dict[str, Any], num_items: float,
                            chunk_rows: int | None = None) -> tuple[torch.Tensor, int]:
    """`causal_lm_loss`, and how many trained tokens the model predicts exactly (argmax of the
    logits equals the label): the numerator of the mean token accuracy, read from the logits the
    loss already computes, so it costs no second forward.

    `chunk_rows` sets how many positions the fused head projects at once (default: about
    `CHUNK_BYTES` of fp32 logits)."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    keep = trained_positions(labels)
    targets = labels[:, 1:][keep[:, :-1]]
    out = None
    if takes_boolean_logits_to_keep(model):
        heads = _fusable_heads(model)
        if heads:
            fused = _FusedHeadCall(targets, chunk_rows)
            with fused.patched(heads):
                out = model(**inputs, logits_to_keep=keep)
            if _returned_unchanged(out.logits, fused.result):
                # out.logits rather than our own tensor: a wrapper's hook on the head (ZeRO-3's,
                # which gathers the head's weight again before its backward) may pass it through.
                hits = fused.result[1]
                return _with_aux_loss(model, out, out.logits / num_items, targets, num_items), int(hits.item())
            # The model changed the head's output after all: recompute through its own logits.
            _warn_unfused_once(model)
            out = fused = None  # drop the first forward's graph before the second
        out = model(**inputs, logits_to_keep=keep)
    else:
        out = model(**inputs)
    logits = out.logits
    if logits.dim() == 3:  # every position came back
        logits = logits[keep]
    loss = F.cross_entropy(logits.float(), targets, reduction="sum") / num_items
    hits = int((logits.detach().argmax(dim=-1) == targets).sum().item())
    return _with_aux_loss(model, out, loss, targets, num_items), hits


def _returned_unchanged(logits, result: tuple[torch.Tensor, torch.Tensor] | None) -> bool:
    """Whether the model returned the fused head's loss sum as it was computed: the very tensor,
    or the same value passed through a module hook (DeepSpeed wraps every module's outputs)."""
    if result is None or not isinstance(logits, torch.Tensor) or logits.dim() != 0:
        return False
    return logits is result[0] or torch.equal(logits.detach(), result[0].detach())


def _warn_unfused_once(model) -> None:
    name = type(inner_causal_lm(model)).__name__
    if name not in _WARNED:
        _WARNED.add(name)
        logger.warning("%s changes the output head's result after the head; its loss is computed from "
                       "full logits, with one more forward pass per micro-batch", name)


_WARNED: set[str] = set()


def _with_aux_loss(model, out, loss: torch.Tensor, targets: torch.Tensor, num_items: float) -> torch.Tensor:
    aux = getattr(out, "aux_loss", None)
    coef = _aux_loss_coefficient(model)
    if aux is not None and coef:
        # Mixture-of-experts load balancing, weighted by this micro-batch's share of the step.
        loss = loss + coef * aux * (targets.numel() / num_items)
    return loss


# --------------------------------------------------------------------------- fused output head

# fp32 logits one chunk of the fused head holds at a time (in bf16 the chunk's bf16 logits and
# gradient come on top); MIN_CHUNK_ROWS keeps matrix products efficient at 150k+ vocabularies.
CHUNK_BYTES = 32 * 2**20
MIN_CHUNK_ROWS = 16


def _fusable_heads(model) -> list[torch.nn.Linear]:
    """The plain linear layers the output head may call (the head itself, or the original and
    trained copies inside PEFT's `modules_to_save` wrapper), or [] when fusing would not compute
    what the model computes."""
    inner = inner_causal_lm(model)
    config = getattr(inner, "config", None)
    configs = [config, getattr(config, "text_config", None) if config is not None else None]
    if any(getattr(c, name, None) is not None for c in configs if c is not None for name in LOGIT_POSTPROCESSING):
        return []
    get_head = getattr(inner, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if type(head) is torch.nn.Linear:
        candidates = [head]
    elif type(head).__name__ == "ModulesToSaveWrapper":
        candidates = [getattr(head, "original_module", None), *getattr(head, "modules_to_save", {}).values()]
        if any(type(m) is not torch.nn.Linear for m in candidates):
            return []
    else:
        return []
    # accelerate's hooks move or load weights around the module's own forward: leave those alone.
    if any(hasattr(m, "_hf_hook") or m.weight.device.type == "meta" for m in candidates):
        return []
    return candidates


class _FusedHeadCall:
    """Swaps the forward of the head's linear layers for the fused projection + cross-entropy for
    one model call; `result` is (loss sum, hits) when the model called the head exactly once with
    the trained positions' hidden states."""

    def __init__(self, targets: torch.Tensor, chunk_rows: int | None):
        self.targets = targets
        self.chunk_rows = chunk_rows
        self.result: tuple[torch.Tensor, torch.Tensor] | None = None
        self.calls = 0

    @contextmanager
    def patched(self, heads: list[torch.nn.Linear]):
        saved = [(m, m.__dict__.get("forward")) for m in heads]
        try:
            for m in heads:
                m.forward = partial(self._forward, m)
            yield self
        finally:
            for m, previous in saved:
                if previous is None:
                    del m.forward
                else:
                    m.forward = previous

    def _forward(self, linear: torch.nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > 1 or hidden.dim() != 2 or hidden.shape[0] != self.targets.numel():
            self.result = None  # not the single call on the trained positions: compute plainly
            return F.linear(hidden, linear.weight, linear.bias)
        vocab = linear.weight.shape[0]
        rows = self.chunk_rows or max(MIN_CHUNK_ROWS, CHUNK_BYTES // (4 * vocab))
        self.result = ChunkedHeadCrossEntropy.apply(hidden, linear.weight, linear.bias,
                                                    self.targets.to(hidden.device), rows)
        return self.result[0]


class ChunkedHeadCrossEntropy(torch.autograd.Function):
    """sum_i cross_entropy(hidden_i @ W^T + b, target_i) and the number of argmax hits, `rows`
    positions at a time; saves hidden states and per-position logsumexp, never the logits.

    The logits are computed as the head computes them (in the autocast dtype when autocast is
    on, as in the model's forward) and taken to fp32 (fp64 stays fp64) for the softmax, like the
    unfused loss.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, rows):
        device = hidden.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.compute_dtype = F.linear(hidden[:0], weight, bias).dtype  # the head's output dtype, autocast included
        ctx.softmax_dtype = torch.promote_types(ctx.compute_dtype, torch.float32)
        n = hidden.shape[0]
        lse = torch.empty(n, dtype=ctx.softmax_dtype, device=hidden.device)
        target_logit = torch.empty(n, dtype=ctx.softmax_dtype, device=hidden.device)
        hits = torch.zeros((), dtype=torch.int64, device=hidden.device)
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            logits = F.linear(hidden[start:stop], weight, bias).to(ctx.softmax_dtype)
            chunk_targets = targets[start:stop]
            lse[start:stop] = torch.logsumexp(logits, dim=-1)
            target_logit[start:stop] = logits.gather(1, chunk_targets[:, None]).squeeze(1)
            hits += (logits.argmax(dim=-1) == chunk_targets).sum()
            del logits
        ctx.rows = rows
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.mark_non_differentiable(hits)
        return (lse - target_logit).sum(), hits

    @staticmethod
    def backward(ctx, grad_loss, _grad_hits):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        device, autocast_on, autocast_dtype = ctx.autocast
        n, rows = hidden.shape[0], ctx.rows
        compute = ctx.compute_dtype
        weight_c = weight.to(compute)  # no copy unless autocast computed the head in a lower precision
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight) if need_weight else None
        grad_bias = torch.zeros(weight.shape[0], dtype=ctx.softmax_dtype, device=weight.device) if need_bias else None
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            with torch.autocast(device, dtype=autocast_dtype, enabled=autocast_on):
                logits = F.linear(hidden[start:stop], weight, bias)
            # softmax - one-hot, scaled by the incoming gradient: d(sum of cross-entropies)/d(logits)
            grad_logits = logits.to(ctx.softmax_dtype).sub_(lse[start:stop, None]).exp_()
            del logits
            index = torch.arange(stop - start, device=grad_logits.device)
            grad_logits[index, targets[start:stop]] -= 1
            grad_logits.mul_(grad_loss)
            if need_bias:
                grad_bias += grad_logits.sum(dim=0)
            grad_logits = grad_logits.to(compute)
            if need_hidden:
                grad_hidden[start:stop] = grad_logits @ weight_c
            if need_weight:
                grad_weight.addmm_(grad_logits.t().to(weight.dtype), hidden[start:stop].to(weight.dtype))
        if need_bias:
            grad_bias = grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None


def _aux_loss_coefficient(model) -> float | None:
    """The load-balancing weight the model itself adds to its loss (mixture-of-experts)."""
    inner = inner_causal_lm(model)
    for name in ("router_aux_loss_coef", "aux_loss_coef"):
        value = getattr(inner, name, None)
        if value is None:
            value = getattr(getattr(inner, "config", None), name, None)
        if isinstance(value, (int, float)):
            return float(value)
    return None
