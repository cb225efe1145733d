"""The training loss computed at trained positions only, and the cheap-mask LoRA dropout, are
exactly what they replace: same loss and gradients as the model's own loss, same dropout law."""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM

from tunesmith.chat.masking import IGNORE_INDEX
from tunesmith.chat.packing import PackedRowsCollator, PaddedCollator, pack_examples
from tunesmith.train.dropout import CheapMaskDropout, apply_noise, dropped_positions, use_cheap_dropout
from tunesmith.train.loss import causal_lm_loss, trained_positions


def _examples(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for length, prompt in ((9, 4), (23, 15), (14, 3), (31, 20), (6, 5)):
        ids = torch.randint(3, vocab, (length,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return out


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("layout", ["padded", "packed_rows"])
def test_loss_at_trained_positions_equals_the_models_own_loss(tiny_model, layout):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    examples = _examples(model.config.vocab_size)
    collate = PaddedCollator(pad_token_id=0) if layout == "padded" else PackedRowsCollator(pad_token_id=0)
    batch = collate(examples if layout == "padded" else pack_examples(examples, 40))
    if layout == "packed_rows":
        assert batch["input_ids"].shape[0] < len(examples)  # rows really hold several examples
    n = float((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    reference = model(**batch, num_items_in_batch=n).loss
    reference.backward()
    expected = _grads(model)
    model.zero_grad()
    ours = causal_lm_loss(model, batch, n)
    ours.backward()
    got = _grads(model)

    assert torch.allclose(ours, reference, rtol=1e-5, atol=1e-6)
    assert expected.keys() == got.keys() and expected
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_models_that_return_every_position_still_get_the_right_loss(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    batch = PaddedCollator(pad_token_id=0)(_examples(model.config.vocab_size))
    n = float((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    class RemoteCodeModel(nn.Module):
        """Like remote code copied from an older transformers: a boolean mask would break it."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, logits_to_keep=0, **kwargs):
            if not isinstance(logits_to_keep, int):
                raise IndexError("too many indices for tensor of dimension 3")
            return self.inner(**kwargs)

    with torch.no_grad():
        reference = model(**batch, num_items_in_batch=n).loss
        ours = causal_lm_loss(RemoteCodeModel(model), batch, n)
    assert torch.allclose(ours, reference, rtol=1e-5, atol=1e-6)


def test_transformers_releases_without_the_mask_slicer_get_full_logits(tiny_model, monkeypatch):
    """transformers 5.17's own models index `hidden_states[:, logits_to_keep, :]` (their module
    has no `slice_logits_to_keep`): they must not be given the boolean mask."""
    import sys
    import types

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    batch = PaddedCollator(pad_token_id=0)(_examples(model.config.vocab_size))
    n = float((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    older = types.ModuleType("transformers.models.llama.modeling_llama_5_17")  # no slice_logits_to_keep
    monkeypatch.setitem(sys.modules, older.__name__, older)

    def forward(self, *args, logits_to_keep=0, **kwargs):
        if not isinstance(logits_to_keep, int):
            raise IndexError("too many indices for tensor of dimension 3")
        return super(type(self), self).forward(*args, **kwargs)

    model.__class__ = type("OlderLlamaForCausalLM", (type(model),), {"forward": forward, "__module__": older.__name__})
    with torch.no_grad():
        ours = causal_lm_loss(model, batch, n)
        reference = model(**batch, num_items_in_batch=n).loss
    assert torch.allclose(ours, reference, rtol=1e-5, atol=1e-6)


def test_trained_positions_are_the_ones_before_each_labelled_token():
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 5, 6, IGNORE_INDEX], [IGNORE_INDEX, 7, IGNORE_INDEX, 8, 9]])
    assert trained_positions(labels).tolist() == [[False, True, True, False, False], [True, False, True, True, False]]


def test_cheap_mask_dropout_follows_the_dropout_law():
    torch.manual_seed(0)
    p = 0.1
    layer = CheapMaskDropout(p).train()
    x = torch.ones(1001, 997)
    y = layer(x)
    n = x.numel()
    kept = y != 0
    rate = kept.float().mean().item()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs((1 - rate) - p) < 5 * sigma
    assert torch.equal(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    # neighbours are independent: both of two adjacent elements are dropped with probability p^2
    dropped = ~kept.flatten()
    both = (dropped[1:] & dropped[:-1]).float().mean().item()
    assert abs(both - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / (n - 1))
    # Masks are fresh on every call, and the expectation is preserved.
    assert not torch.equal(layer(x) != 0, kept)
    assert abs(y.mean().item() - 1.0) < 5 * math.sqrt(p / (1 - p) / n)


def test_every_position_is_dropped_with_probability_p():
    """Including the first and the last: the gaps start before position 0 and the positions
    are cut at n, and neither end may be favoured."""
    torch.manual_seed(5)
    p, n, draws = 0.2, 16, 4000
    counts = torch.zeros(n)
    for _ in range(draws):
        counts[dropped_positions(n, p)] += 1
    sigma = math.sqrt(p * (1 - p) / draws)
    assert ((counts / draws - p).abs() < 5 * sigma).all(), counts / draws


def test_dropped_positions_do_not_depend_on_the_chunk_size():
    torch.manual_seed(11)
    default = dropped_positions(50_000, 0.05)
    torch.manual_seed(11)
    small_chunks = dropped_positions(50_000, 0.05, chunk=7)  # ~360 chunks, each falling short
    assert torch.equal(default, small_chunks)
    assert bool((default[1:] > default[:-1]).all()) and 0 <= int(default[0]) and int(default[-1]) < 50_000
    assert dropped_positions(0, 0.5).numel() == 0


def test_cheap_mask_dropout_gradient_is_the_mask_and_eval_is_identity():
    torch.manual_seed(1)
    layer = CheapMaskDropout(0.3).train()
    x = torch.randn(64, 48, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0).float() * layer.scale)
    torch.manual_seed(7)
    a = layer(x)
    torch.manual_seed(7)
    assert torch.equal(a, layer(x)), "the mask must come from torch's seeded generator"
    layer.eval()
    assert layer(x) is x
    assert CheapMaskDropout(0.0).train()(x) is x


def test_lora_dropout_is_swapped_on_cpu_only_for_real_dropout(tiny_model):
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_dropout=0.05, target_modules="all-linear"))
    lora_dropouts = [d for m in model.modules() if isinstance(getattr(m, "lora_dropout", None), nn.ModuleDict)
                     for d in m.lora_dropout.values()]
    assert use_cheap_dropout(model) == len(lora_dropouts) > 0
    assert all(isinstance(m.lora_dropout[k], CheapMaskDropout) for m in model.modules()
               if isinstance(getattr(m, "lora_dropout", None), nn.ModuleDict) for k in m.lora_dropout)
    plain = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), LoraConfig(r=4, lora_dropout=0.0,
                                                                                        target_modules="all-linear"))
    assert use_cheap_dropout(plain) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_noise_product_equals_select_then_scale(dtype):
    # The float32 path multiplies by {0, scale}; a survivor must get exactly the rounding of
    # x * scale that selecting and then scaling gives, and a dropped element must compare equal to 0.
    torch.manual_seed(3)
    layer = CheapMaskDropout(0.05).train()
    x = (torch.randn(37, 129) * 10).to(dtype)
    keep = layer.keep_mask(x)
    expected = torch.where(keep, x, 0).mul_(layer.scale)
    got = apply_noise(x, keep, layer.scale)
    assert got.dtype == dtype
    assert torch.equal(got, expected)
    assert bool((got[~keep] == 0).all()) and bool((~keep).any())


def test_cheap_mask_dropout_keeps_a_one_byte_mask_for_the_backward_pass():
    layer = CheapMaskDropout(0.1).train()
    x = torch.randn(64, 48, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer(x)
    assert [t.dtype for t in saved] == [torch.bool] and saved[0].shape == x.shape
    y.sum().backward()
    assert torch.equal(x.grad, (y.detach() != 0).float() * layer.scale)
