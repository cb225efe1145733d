"""The lean gated MLP computes exactly what transformers' Llama MLP computes (loss and gradients bit
for bit, with LoRA and in full fine-tuning), keeps one MLP-width tensor less per layer, and leaves
any other MLP alone."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from tunesmith.train.dropout import use_cheap_dropout
from tunesmith.train.lean_lora import use_lean_lora
from tunesmith.train.lean_mlp import use_lean_mlp


def _model(tiny_model, lean: bool, lora: bool):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear"))
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.05)
        use_cheap_dropout(model)
        use_lean_lora(model)
    if lean:
        assert use_lean_mlp(model) == model.config.num_hidden_layers
    return model.train()


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_lean_mlp_is_bit_identical(tiny_model, lora):
    ids = torch.randint(3, 200, (2, 24), generator=torch.Generator().manual_seed(0))
    results = []
    for lean in (False, True):
        model = _model(tiny_model, lean, lora)
        torch.manual_seed(1)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads, torch.rand(3)))
    (loss_a, grads_a, next_a), (loss_b, grads_b, next_b) = results
    assert torch.equal(loss_a, loss_b) and torch.equal(next_a, next_b)
    assert grads_a.keys() == grads_b.keys() and any("gate_proj" in n for n in grads_a)
    for name, grad in grads_a.items():
        assert torch.equal(grad, grads_b[name]), name


def test_lean_mlp_keeps_one_intermediate_tensor_less_per_layer(tiny_model):
    ids = torch.randint(3, 200, (2, 24), generator=torch.Generator().manual_seed(0))

    def saved_bytes(model) -> int:
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen: dict[int, int] = {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids, labels=ids)
        return sum(seen.values())

    config = AutoModelForCausalLM.from_pretrained(tiny_model).config
    one_tensor_per_layer = config.num_hidden_layers * ids.numel() * config.intermediate_size * 4
    saved = saved_bytes(_model(tiny_model, lean=False, lora=True)) - saved_bytes(_model(tiny_model, lean=True, lora=True))
    assert saved == one_tensor_per_layer


def test_other_mlps_keep_their_forward():
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, hidden_act="gelu")
    assert use_lean_mlp(LlamaForCausalLM(config)) == 0, "not a SiLU gate"

    silu = LlamaForCausalLM(LlamaConfig(**{**config.to_dict(), "hidden_act": "silu"}))
    mlp = silu.model.layers[0].mlp

    class ScaledMLP(type(mlp)):
        def forward(self, x):
            return 2 * super().forward(x)

    mlp.__class__ = ScaledMLP
    assert use_lean_mlp(silu) == 0, "a forward that differs from Llama's"
