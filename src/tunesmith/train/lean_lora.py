"""A LoRA branch that keeps less for the backward pass.

PEFT computes a LoRA layer as `base(x) + lora_B(lora_A(dropout(x))) * scaling`. With dropout on,
`dropout(x)` is a new tensor the size of the layer's input, and `lora_A` saves it for its weight
gradient; so does every adapted layer that reads the same `x` (q, k and v each keep their own
dropped copy of one normed hidden state, `down_proj` keeps one of the MLP's widest tensor). On
SmolLM2-135M with LoRA on every linear layer and dropout 0.05 those copies are about a third of
the activations a step keeps.

`LeanLoraBranch` computes the same branch with one autograd node that saves the input `x` (which
the layers around it keep anyway, so saving it costs nothing), the dropout's keep-mask (one byte
per element instead of four) and the rank-r intermediate, and rebuilds the dropped input in the
backward pass, where it costs one elementwise product. The forward pass runs the same operations
in the same order as PEFT, with the same random draws, so outputs, losses and exact resume are
unchanged; the gradients are the same matrix products autograd would form. It also allocates one
full-width temporary per layer where PEFT allocates three (the product, its scaled copy and the
sum), which matters on CPU, where glibc keeps freed blocks resident.

`use_lean_lora` switches the plain LoRA linear layers of a model to it. Layers it cannot
reproduce exactly fall back to PEFT's own forward at every call: DoRA and other variants,
several active adapters, mixed-adapter batches, merged or disabled adapters, a LoRA bias, or an
input whose dtype differs from the adapter's.
"""

from __future__ import annotations

from types import MethodType
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.train.dropout import CheapMaskDropout, apply_noise, survivor_noise


class LeanLoraBranch(torch.autograd.Function):
    """`F.linear(F.linear(dropout(x), a), b) * scaling`, saving x, the keep-mask and the rank-r
    intermediate rather than the dropped input."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float,
                keep: Optional[torch.Tensor], keep_scale: float) -> torch.Tensor:
        dropped = x if keep is None else apply_noise(x, keep, keep_scale)
        down = F.linear(dropped, a)
        ctx.scaling, ctx.keep_scale = scaling, keep_scale
        ctx.save_for_backward(x, a, b, down, keep)
        return F.linear(down, b).mul_(scaling)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, a, b, down, keep = ctx.saved_tensors
        need_x, need_a, need_b = ctx.needs_input_grad[:3]
        grad_up = (grad_out * ctx.scaling).reshape(-1, b.shape[0])
        down_2d = down.reshape(-1, a.shape[0])
        grad_b = grad_up.t().mm(down_2d) if need_b else None
        grad_down = grad_up.mm(b)
        grad_a = grad_x = None
        # One {0, scale} multiplier serves both gradients (float32; other dtypes select and scale)
        noise = survivor_noise(keep, ctx.keep_scale, x.dtype) if keep is not None and x.dtype == torch.float32 else None
        if need_a:
            if keep is None:
                dropped = x
            elif noise is not None:
                dropped = x * noise
            else:
                dropped = apply_noise(x, keep, ctx.keep_scale)
            grad_a = grad_down.t().mm(dropped.reshape(-1, a.shape[1]))
            del dropped
        if need_x:
            grad_x = grad_down.mm(a).reshape(x.shape)
            if noise is not None:
                grad_x.mul_(noise)
            elif keep is not None:
                grad_x = apply_noise(grad_x, keep, ctx.keep_scale)
        return grad_x, grad_a, grad_b, None, None, None


def _lean_adapter(layer) -> Optional[str]:
    """The one active adapter `layer` can run leanly right now, or None to use PEFT's forward."""
    if layer.disable_adapters or layer.merged or not torch.is_grad_enabled():
        return None
    active = [name for name in layer.active_adapters if name in layer.lora_A]
    if len(active) != 1:
        return None
    name = active[0]
    if name in getattr(layer, "lora_variant", {}):  # DoRA and other variants
        return None
    if layer.lora_A[name].bias is not None or layer.lora_B[name].bias is not None:
        return None
    return name


def _reproducible(dropout: nn.Module) -> bool:
    """Whether `_keep_mask` draws exactly what `dropout` itself would."""
    return (isinstance(dropout, (nn.Identity, CheapMaskDropout))
            or (isinstance(dropout, nn.Dropout) and (dropout.p == 0 or not dropout.training)))


def _keep_mask(dropout: nn.Module, x: torch.Tensor) -> tuple[Optional[torch.Tensor], float]:
    """The dropout's keep-mask and survivor scale, drawn as the module itself would draw them;
    (None, 1.0) when it drops nothing."""
    if isinstance(dropout, CheapMaskDropout) and dropout.training and dropout.threshold > 0:
        return dropout.keep_mask(x), dropout.scale
    return None, 1.0


def _lean_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    name = None if args or kwargs else _lean_adapter(self)
    if (name is None or x.dtype != self.lora_A[name].weight.dtype
            or not _reproducible(self.lora_dropout[name])):
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x)  # before the mask is drawn, as in PEFT's order
    keep, keep_scale = _keep_mask(self.lora_dropout[name], x)
    branch = LeanLoraBranch.apply(x, self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name],
                                  keep, keep_scale)
    # In place: the frozen base product is not saved by anyone, and each full-width temporary a
    # LoRA layer allocates adds to what the allocator keeps resident.
    return result.add_(branch)


def use_lean_lora(model: nn.Module) -> int:
    """Run the plain LoRA linear layers of `model` through `LeanLoraBranch`; returns how many."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    switched = 0
    for module in model.modules():
        if type(module) is LoraLinear and "forward" not in module.__dict__:
            module.forward = MethodType(_lean_forward, module)
            switched += 1
    return switched
