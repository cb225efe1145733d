"""LoRA input dropout with a cheaper mask on CPU.

PEFT applies `nn.Dropout` to the input of every adapted layer. On CPU, drawing its Bernoulli
mask is the largest single cost of a LoRA step on a small model after the matrix products:
torch's CPU generator produces one 32-bit draw per element. `CheapMaskDropout` draws the gaps
between dropped elements instead: in a sequence of independent Bernoulli(p) trials the distance
from one drop to the next is geometric, so about n * p draws (with p = 0.05, one in twenty) place
every drop of n elements, and the mask is a tensor of ones with zeros written at those places.

Semantics are those of inverted dropout with exactly p: every element is zeroed independently
with probability p and the survivors are scaled by 1 / (1 - p). The draws come from torch's
global generator, so seeding and exact resume behave as with `nn.Dropout`. On CUDA the fused
dropout kernel is already cheap, and the modules are left as PEFT made them.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def dropped_positions(n: int, p: float, device: torch.device | str = "cpu", chunk: int | None = None) -> torch.Tensor:
    """The sorted flat positions, in [0, n), that independent Bernoulli(p) trials drop.

    The gap from one drop to the next (from -1 to the first) is geometric on {1, 2, ...}:
    floor(log(1 - u) / log(1 - p)) + 1 for u uniform in [0, 1), drawn in float64 from torch's
    global generator. Draws come in chunks (by default sized to cover n with overwhelming
    probability); a chunk that falls short is followed by another, and since the generator's
    stream does not depend on how it is split, the positions do not depend on the chunk size.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"dropout probability must be in (0, 1), got {p}")
    log_keep = math.log1p(-p)
    if chunk is None:
        mean = n * p
        chunk = int(mean + 6 * math.sqrt(mean * (1 - p))) + 16
    parts, start = [], -1
    while True:
        gaps = torch.rand(chunk, dtype=torch.float64).neg_().log1p_().div_(log_keep).floor_().add_(1)
        positions = gaps.to(torch.int64).cumsum_(0).add_(start)
        if int(positions[-1]) >= n:
            # a copy, so the chunk's unused tail is not kept along with it for the backward pass
            parts.append(positions[: int(torch.searchsorted(positions, n))].clone())
            break
        parts.append(positions)
        start = int(positions[-1])
    positions = parts[0] if len(parts) == 1 else torch.cat(parts)
    return positions.to(device)


def zero_positions_(t: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """`t` (contiguous) with its elements at the flat positions `dropped` set to 0, in place: a
    write per dropped element, where a {0, 1} multiplier costs a conversion and a product over
    every element."""
    t.view(-1)[dropped] = 0
    return t


def zero_at(x: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of `x` with the elements at the flat positions `dropped` set to 0."""
    return zero_positions_(x.clone(memory_format=torch.contiguous_format), dropped)


def keep_mask_of(dropped: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A boolean mask shaped like `x`, False at the flat positions `dropped`."""
    keep = zero_positions_(torch.ones(x.numel(), dtype=torch.uint8, device=x.device), dropped)
    return keep.view(torch.bool).view(x.shape)


class CheapMaskDropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.scale = 1.0 / (1.0 - p)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def dropped(self, x: torch.Tensor) -> torch.Tensor:
        """The positions in `x.view(-1)` (x's elements in their logical order) this call drops,
        drawn from torch's global generator: one call consumes the same draws as one forward."""
        return dropped_positions(x.numel(), self.p, x.device)

    def keep_mask(self, x: torch.Tensor) -> torch.Tensor:
        """`dropped` as a boolean mask shaped like `x`, True where an element survives."""
        return keep_mask_of(self.dropped(x), x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return apply_noise(x, self.keep_mask(x), self.scale)


def _survivor_noise(keep: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    # Through uint8, not bool: torch's CPU kernels convert uint8 to float several times faster.
    return keep.view(torch.uint8).to(dtype).mul_(scale)


class _KeepAndScale(torch.autograd.Function):
    """`x * noise` with a {0, scale} multiplier rebuilt from the one-byte mask in the backward pass,
    so autograd keeps the mask rather than a float32 multiplier (a quarter of the memory)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x * _survivor_noise(keep, scale, x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return grad * _survivor_noise(keep, ctx.scale, grad.dtype), None, None


def apply_noise(x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    """`x` with the dropped elements zeroed and the survivors multiplied by `scale`.

    In float32, one product with a {0, scale} multiplier: a survivor gets the same single
    rounding of x * scale as a masked select followed by the scaling, at a third of the cost
    on CPU (a dropped element becomes -0.0 where x < 0, which no sum or product distinguishes
    from 0.0). Other dtypes would round the multiplier itself, so they select and scale.
    """
    if x.dtype == torch.float32:
        return _KeepAndScale.apply(x, keep, scale)
    return torch.where(keep, x, 0).mul_(scale)


def use_cheap_dropout(model: nn.Module) -> int:
    """Swap the LoRA `nn.Dropout` modules for `CheapMaskDropout` (for models that train on CPU);
    returns how many."""
    swapped = 0
    for module in model.modules():
        table = getattr(module, "lora_dropout", None)
        if not isinstance(table, nn.ModuleDict):
            continue
        for name, layer in list(table.items()):
            if type(layer) is nn.Dropout and layer.p > 0:
                table[name] = CheapMaskDropout(layer.p)
                swapped += 1
    return swapped
