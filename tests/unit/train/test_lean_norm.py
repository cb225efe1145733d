"""The lean RMSNorm gives transformers' Llama RMSNorm output bit for bit and its gradients up to
float rounding (input and weight), and leaves other norms, other dtypes and inference alone."""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from tunesmith.train.lean_norm import LeanRMSNorm, use_lean_norm


def _pair(width: int = 48, weight_grad: bool = True):
    torch.manual_seed(0)
    reference = LlamaRMSNorm(width, eps=1e-6)
    nn.init.normal_(reference.weight, mean=1.0, std=0.3)
    reference.weight.requires_grad_(weight_grad)
    lean = LlamaRMSNorm(width, eps=1e-6)
    lean.weight = nn.Parameter(reference.weight.detach().clone(), requires_grad=weight_grad)
    holder = nn.Sequential(lean)
    assert use_lean_norm(holder) == 1
    return reference, lean


def test_lean_norm_matches_transformers():
    reference, lean = _pair()
    x = (torch.randn(3, 17, 48) * 4).requires_grad_(True)
    g = torch.randn(3, 17, 48)
    results = []
    for norm in (reference, lean):
        x.grad = None
        out = norm(x)
        out.backward(g)
        results.append((out.detach(), x.grad.clone(), norm.weight.grad.clone()))
    (out_a, gx_a, gw_a), (out_b, gx_b, gw_b) = results
    assert torch.equal(out_a, out_b)
    torch.testing.assert_close(gx_b, gx_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw_b, gw_a, rtol=1e-5, atol=1e-5)


def test_lean_norm_runs_only_where_it_applies(monkeypatch):
    calls = []
    apply = LeanRMSNorm.apply
    monkeypatch.setattr(LeanRMSNorm, "apply", lambda *args: calls.append(1) or apply(*args))
    _, lean = _pair(weight_grad=False)
    x = torch.randn(2, 5, 48, requires_grad=True)
    lean(x).sum().backward()
    assert calls and x.grad is not None
    calls.clear()
    with torch.no_grad():
        lean(x)
    lean(x.detach().to(torch.bfloat16))
    assert not calls, "inference and non-float32 inputs keep transformers' forward"

    class OtherNorm(nn.Module):  # same attributes, different forward: left alone
        def __init__(self):
            super().__init__()
            self.weight, self.variance_epsilon = nn.Parameter(torch.ones(4)), 1e-6

        def forward(self, x):
            return x * self.weight

    assert use_lean_norm(nn.Sequential(OtherNorm())) == 0
