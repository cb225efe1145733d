"""LoRA input dropout with a cheaper mask on CPU.

PEFT applies `nn.Dropout` to the input of every adapted layer. On CPU, drawing its Bernoulli
mask is the largest single cost of a LoRA step on a small model (about a fifth of the step
for the embedded default model with `lora.dropout: 0.05`): torch's CPU generator produces
one 32-bit draw per element. `CheapMaskDropout` draws 64-bit words and uses each as four
16-bit uniform numbers, so one draw serves four elements.

Semantics are those of inverted dropout: every element is zeroed independently with
probability p' = round(p * 65536) / 65536 (|p' - p| < 8e-6) and the survivors are scaled by
1 / (1 - p'). The draws come from torch's global generator, so seeding and exact resume
behave as with `nn.Dropout`. On CUDA the fused dropout kernel is already cheap, and the
modules are left as PEFT made them.
"""

from __future__ import annotations

import torch
from torch import nn

_LEVELS = 1 << 16
_INT64_MIN = -(1 << 63)


class CheapMaskDropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.threshold = round(p * _LEVELS)
        self.scale = _LEVELS / (_LEVELS - self.threshold)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def keep_mask(self, x: torch.Tensor) -> torch.Tensor:
        """A boolean mask shaped like `x`, True where an element survives (drawn from torch's
        global generator, so one call consumes the same draws as one forward)."""
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(_INT64_MIN, None)
        uniform16 = words.view(torch.int16)[:n].view(x.shape)  # each in [-32768, 32767], uniformly
        return uniform16 >= self.threshold - _LEVELS // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
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
