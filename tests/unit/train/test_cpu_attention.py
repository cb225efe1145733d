"""Training on CPU runs SDPA on the grouped key/value heads instead of repeating them: the same loss
bit for bit, the same gradients up to summation order, no repeated copies, and inference untouched."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM
from transformers.integrations import sdpa_attention

from tunesmith.train import cpu_attention
from tunesmith.train.cpu_attention import use_grouped_attention_on_cpu


def test_training_attention_uses_grouped_heads_with_the_same_results(tiny_model, monkeypatch):
    original = getattr(sdpa_attention, cpu_attention._ORIGINAL, None) or sdpa_attention.use_gqa_in_sdpa
    monkeypatch.setattr(sdpa_attention, "use_gqa_in_sdpa", original)  # undone after the test
    monkeypatch.setattr(sdpa_attention, cpu_attention._ORIGINAL, None, raising=False)
    repeats = []
    real_repeat = sdpa_attention.repeat_kv
    monkeypatch.setattr(sdpa_attention, "repeat_kv", lambda h, n: repeats.append(n) or real_repeat(h, n))

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="sdpa")
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    ids = torch.randint(3, 200, (2, 24), generator=torch.Generator().manual_seed(0))
    # two packed examples per row: positions restart, so transformers builds a mask (as it does
    # for training batches, which pass use_cache=False)
    positions = torch.tensor([list(range(10)) + list(range(14))] * 2)

    def loss_and_grads():
        model.zero_grad()
        loss = model(input_ids=ids, labels=ids, position_ids=positions, use_cache=False).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss_a, grads_a = loss_and_grads()
    assert repeats, "transformers repeats keys and values when a mask is given"
    repeats.clear()
    assert use_grouped_attention_on_cpu() and use_grouped_attention_on_cpu()  # idempotent
    loss_b, grads_b = loss_and_grads()
    assert not repeats
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    with torch.no_grad():  # generation and serving keep transformers' own choice
        model(input_ids=ids, position_ids=positions, use_cache=False)
    assert repeats
