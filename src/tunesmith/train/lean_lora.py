"""A LoRA branch that keeps less for the backward pass.

PEFT computes a LoRA layer as `base(x) + lora_B(lora_A(dropout(x))) * scaling`. With dropout on,
`dropout(x)` is a new tensor the size of the layer's input, and `lora_A` saves it for its weight
gradient; so does every adapted layer that reads the same `x` (q, k and v each keep their own
dropped copy of one normed hidden state, `down_proj` keeps one of the MLP's widest tensor). On
SmolLM2-135M with LoRA on every linear layer and dropout 0.05 those copies are about a third of
the activations a step keeps.

`LeanLoraBranch` computes the same branch with one autograd node that saves the input `x` (which
the layers around it keep anyway, so saving it costs nothing), the positions the dropout drops
(8 bytes per dropped element: 0.4 bytes per element at dropout 0.05, where a float copy takes 4)
and the rank-r intermediate, and rebuilds the dropped input in the backward pass, where it costs
one copy. It draws the same dropout masks from the same random draws as PEFT's layer with
`CheapMaskDropout`, in the same order, and computes the same values up to float rounding
(it scales rank-r tensors rather than full-width ones, see the class); it is deterministic, so
exact resume holds. The up-projection is accumulated into the base layer's output rather than
into temporaries of the output's width, which matters on CPU, where glibc keeps freed blocks
resident.

`use_lean_lora` switches the plain LoRA linear layers of a model to it. Layers it does not
cover fall back to PEFT's own forward at every call: DoRA and other variants,
several active adapters, mixed-adapter batches, merged or disabled adapters, a LoRA bias, an
input whose dtype differs from the adapter's, a trainable base layer, or weights that DeepSpeed
ZeRO-3 partitions.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.train.dropout import CheapMaskDropout, zero_at, zero_positions_
from tunesmith.train.forward_swap import swap_forwards


class LeanLoraBranch(torch.autograd.Function):
    """`F.linear(x, weight, bias) + F.linear(F.linear(dropout(x), a), b) * scaling` for a frozen
    base layer, as one autograd node saving x, the dropped positions and the rank-r intermediate
    rather than the dropped input.

    Both scalars (the dropout's survivor scale and LoRA's scaling) are applied to the rank-r
    intermediate instead of to tensors of the layers' width; the up-projection is accumulated
    straight into the base output (`addmm_`), and in the backward pass the adapter's share of the
    input gradient into the base layer's, where autograd would sum two separate full-width
    gradients. The dropped input is a copy of x with zeros written at the dropped positions (about
    one element in twenty), made again in the backward pass. The result differs from PEFT's order
    of operations only by float rounding (about 1e-7 relative); the random draws are the same.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], a: torch.Tensor,
                b: torch.Tensor, scaling: float, dropped: Optional[torch.Tensor], keep_scale: float) -> torch.Tensor:
        result = F.linear(x, weight, bias)
        down = F.linear(x if dropped is None else zero_at(x, dropped), a).mul_(scaling * keep_scale)
        result.view(-1, b.shape[0]).addmm_(down.view(-1, a.shape[0]), b.t())
        ctx.factor = scaling * keep_scale
        ctx.save_for_backward(x, weight, a, b, down, dropped)
        return result

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight, a, b, down, dropped = ctx.saved_tensors
        need_x, need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[3], ctx.needs_input_grad[4]
        grad_2d = grad_out.reshape(-1, b.shape[0])
        # (down^T grad)^T rather than grad^T down: the same sums, and on CPU about twice as fast
        # with a rank-r output width
        grad_b = down.reshape(-1, a.shape[0]).t().mm(grad_2d).t() if need_b else None
        grad_down = grad_2d.mm(b).mul_(ctx.factor)
        grad_a = grad_x = None
        x_2d = x.reshape(-1, a.shape[1])
        if need_a:
            grad_a = grad_down.t().mm(x_2d if dropped is None else zero_at(x_2d, dropped))
        if need_x:
            grad_x = grad_2d.mm(weight)  # the frozen base layer's share, as F.linear's backward forms it
            if dropped is None:
                grad_x.addmm_(grad_down, a)
            else:
                grad_x.add_(zero_positions_(grad_down.mm(a), dropped))
            grad_x = grad_x.view(x.shape)
        return grad_x, None, None, grad_a, grad_b, None, None, None


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


def _frozen_linear(layer: nn.Module, dtype: torch.dtype) -> bool:
    """Whether `layer` is a plain linear layer with frozen parameters of `dtype` (LoRA's base)."""
    return (type(layer) is nn.Linear and not layer.weight.requires_grad and layer.weight.dtype == dtype
            and (layer.bias is None or not layer.bias.requires_grad))


def _partitioned(*weights: torch.Tensor) -> bool:
    """Whether DeepSpeed ZeRO-3 partitions these weights: it gathers a module's weights when the
    module itself is called, and the lean node reads them without calling the modules."""
    return any(hasattr(w, "ds_id") for w in weights)


def _reproducible(dropout: nn.Module) -> bool:
    """Whether `_dropped` draws exactly what `dropout` itself would."""
    return (isinstance(dropout, (nn.Identity, CheapMaskDropout))
            or (isinstance(dropout, nn.Dropout) and (dropout.p == 0 or not dropout.training)))


def _dropped(dropout: nn.Module, x: torch.Tensor) -> tuple[Optional[torch.Tensor], float]:
    """The positions the dropout drops and its survivor scale, drawn as the module itself would
    draw them; (None, 1.0) when it drops nothing."""
    if isinstance(dropout, CheapMaskDropout) and dropout.training and dropout.p > 0:
        return dropout.dropped(x), dropout.scale
    return None, 1.0


def _lean_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    name = None if args or kwargs else _lean_adapter(self)
    if (name is None or x.dtype != self.lora_A[name].weight.dtype or not _frozen_linear(self.base_layer, x.dtype)
            or not _reproducible(self.lora_dropout[name])
            or _partitioned(self.base_layer.weight, self.lora_A[name].weight, self.lora_B[name].weight)):
        return type(self).forward(self, x, *args, **kwargs)
    dropped, keep_scale = _dropped(self.lora_dropout[name], x)  # the base layer draws nothing
    base = self.base_layer
    return LeanLoraBranch.apply(x, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight,
                                self.scaling[name], dropped, keep_scale)


def use_lean_lora(model: nn.Module) -> int:
    """Run the plain LoRA linear layers of `model` through `LeanLoraBranch`; returns how many."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    return swap_forwards(model, lambda module: type(module) is LoraLinear, _lean_forward)
