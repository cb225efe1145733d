"""The lean LoRA branch computes what PEFT's LoRA forward computes (the same random draws, outputs
and gradients up to float rounding), keeps no dropped-out copy of any input for the backward pass,
and falls back to PEFT's forward wherever it does not apply."""

from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tunesmith.train.dropout import use_cheap_dropout
from tunesmith.train.lean_lora import use_lean_lora


def _lora_model(tiny_model, lean: bool, dropout: float = 0.1, **lora):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear",
                                            **lora))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero; a non-zero B makes every gradient path count
            torch.nn.init.normal_(p, std=0.05)
    use_cheap_dropout(model)
    if lean:
        assert use_lean_lora(model) > 0
    return model.train()


@contextmanager
def _lean_calls():
    """The calls to the lean node made inside the block (one entry each)."""
    from tunesmith.train import lean_lora

    calls: list[int] = []
    apply = lean_lora.LeanLoraBranch.apply
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lean_lora.LeanLoraBranch, "apply", lambda *args: calls.append(1) or apply(*args))
        yield calls


def _step(model, ids):
    torch.manual_seed(1)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, torch.rand(3)  # the generator's next draws show what the step consumed


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_lean_branch_matches_peft(tiny_model, dropout):
    ids = torch.randint(3, 200, (2, 24), generator=torch.Generator().manual_seed(0))
    peft_loss, peft_grads, peft_next = _step(_lora_model(tiny_model, lean=False, dropout=dropout), ids)
    lean_loss, lean_grads, lean_next = _step(_lora_model(tiny_model, lean=True, dropout=dropout), ids)
    torch.testing.assert_close(lean_loss, peft_loss, rtol=1e-6, atol=0)
    assert torch.equal(peft_next, lean_next), "the dropout masks must consume the same random draws"
    assert peft_grads.keys() == lean_grads.keys() and any("lora_A" in n for n in peft_grads)
    for name, grad in peft_grads.items():
        # the same gradient up to float rounding: scalars are applied to rank-r tensors instead
        torch.testing.assert_close(lean_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_lean_branch_keeps_no_dropped_copy(tiny_model):
    """With dropout, PEFT saves a dropped-out copy of the input of every adapted layer; the lean
    branch saves the input itself (shared by q, k and v) and the dropped positions, so turning
    dropout on adds no floating-point tensor to what the backward pass keeps, and the positions
    take 8 bytes per dropped element (0.8 bytes per element at dropout 0.1, under a byte mask)."""
    ids = torch.randint(3, 200, (2, 24), generator=torch.Generator().manual_seed(0))

    def saved_bytes(model) -> tuple[int, int]:
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen: dict[int, tuple[bool, int]] = {}

        def pack(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in params:
                seen[storage.data_ptr()] = (t.is_floating_point(), storage.nbytes())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids, labels=ids)
        return (sum(n for is_float, n in seen.values() if is_float),
                sum(n for is_float, n in seen.values() if not is_float))

    lean_float, lean_other = saved_bytes(_lora_model(tiny_model, lean=True, dropout=0.1))
    lean_float_no_dropout, other = saved_bytes(_lora_model(tiny_model, lean=True, dropout=0.0))
    assert lean_float == lean_float_no_dropout
    peft_float, peft_other = saved_bytes(_lora_model(tiny_model, lean=False, dropout=0.1))
    assert peft_float > saved_bytes(_lora_model(tiny_model, lean=False, dropout=0.0))[0]
    assert peft_float > lean_float
    config = AutoModelForCausalLM.from_pretrained(tiny_model).config
    elements = ids.numel() * config.num_hidden_layers * (6 * config.hidden_size + config.intermediate_size)
    dropped = (lean_other - other) / 8
    assert abs(dropped - 0.1 * elements) < 5 * math.sqrt(0.1 * 0.9 * elements), (dropped, elements)


def test_falls_back_where_it_cannot_reproduce_peft(tiny_model):
    ids = torch.randint(3, 200, (1, 12), generator=torch.Generator().manual_seed(0))
    model = _lora_model(tiny_model, lean=True, dropout=0.0)
    with _lean_calls() as calls:
        model(input_ids=ids)
        assert calls, "the lean branch runs for plain LoRA"
        calls.clear()
        with model.disable_adapter():
            model(input_ids=ids)
        with torch.no_grad():
            model(input_ids=ids)
        assert not calls, "disabled adapters and inference use PEFT's forward"
    dora = _lora_model(tiny_model, lean=True, dropout=0.0, use_dora=True)
    reference = _lora_model(tiny_model, lean=False, dropout=0.0, use_dora=True)
    torch.testing.assert_close(dora(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=0, atol=0)


def test_a_trainable_base_layer_uses_pefts_forward(tiny_model):
    # The lean node forms no gradient for the base layer's weight, so it runs only when it is frozen.
    ids = torch.randint(3, 200, (1, 12), generator=torch.Generator().manual_seed(0))
    model = _lora_model(tiny_model, lean=True, dropout=0.1)
    for name, p in model.named_parameters():
        if "base_layer" in name:
            p.requires_grad_(True)
    with _lean_calls() as calls:
        model(input_ids=ids, labels=ids).loss.backward()
    assert not calls
    assert all(p.grad is not None for n, p in model.named_parameters() if "base_layer" in n and p.dim() == 2)


def test_weights_partitioned_by_zero3_use_pefts_forward(tiny_model):
    # ZeRO-3 gathers a module's weights only when the module is called; the lean node reads them directly.
    ids = torch.randint(3, 200, (1, 12), generator=torch.Generator().manual_seed(0))
    model = _lora_model(tiny_model, lean=True, dropout=0.1)
    for name, p in model.named_parameters():
        if "lora_A" in name:
            p.ds_id = 0  # the attribute DeepSpeed gives the parameters it partitions
    with _lean_calls() as calls:
        model(input_ids=ids, labels=ids).loss.backward()
    assert not calls
