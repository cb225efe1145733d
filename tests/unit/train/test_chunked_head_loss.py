"""The fused, chunked output head + cross-entropy computes exactly what the unfused loss computes
(loss, argmax hits, gradients of LoRA adapters, of a trained head, of the hidden states), keeps no
(positions, vocabulary) tensor for the backward pass, and is not used where the model changes its
logits after the head."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import CohereConfig, CohereForCausalLM, Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

from tunesmith.chat.masking import IGNORE_INDEX
from tunesmith.chat.packing import PackedRowsCollator, PaddedCollator, pack_examples
from tunesmith.train import loss as loss_module
from tunesmith.train.loss import ChunkedHeadCrossEntropy, causal_lm_loss_and_hits, trained_positions

VOCAB = 301  # prime: no chunk size divides it


def _llama(tied: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=tied, pad_token_id=0)
    return LlamaForCausalLM(config).float()


def _batch(layout: str = "padded", seed: int = 0, untrained_row: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    examples = []
    for length, prompt in ((9, 4), (23, 15), (14, 3), (31, 20), (6, 5)):
        # tokens in pairs (a a b b ...): a head that predicts the current token hits half the time
        ids = torch.randint(3, VOCAB, ((length + 1) // 2,), generator=g).repeat_interleave(2)[:length].tolist()
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    if untrained_row:  # a row whose every label is masked: no trained position at all
        examples.append({"input_ids": list(range(3, 15)), "labels": [IGNORE_INDEX] * 12})
    if layout == "padded":
        return PaddedCollator(pad_token_id=0)(examples)
    return PackedRowsCollator(pad_token_id=0)(pack_examples(examples, 40))


def _trained(batch) -> int:
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def _run(model, batch, n: float, fused: bool, monkeypatch, chunk_rows: int | None = None):
    """(loss, hits, gradients of every trainable parameter), fused or through the unfused path."""
    model.zero_grad(set_to_none=True)
    with monkeypatch.context() as m:
        if not fused:
            m.setattr(loss_module, "_fusable_heads", lambda _model: [])
        calls = _count_fused_calls(m)
        loss, hits = causal_lm_loss_and_hits(model, batch, n, chunk_rows=chunk_rows)
    assert calls["n"] == (1 if fused else 0)  # the path under test really ran
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), hits, grads


def _count_fused_calls(m) -> dict[str, int]:
    calls = {"n": 0}
    original = ChunkedHeadCrossEntropy.apply

    def counted(*args):
        calls["n"] += 1
        return original(*args)

    m.setattr(ChunkedHeadCrossEntropy, "apply", counted)
    return calls


def _assert_same(fused, unfused):
    (loss_f, hits_f, grads_f), (loss_u, hits_u, grads_u) = fused, unfused
    torch.testing.assert_close(loss_f, loss_u, rtol=1e-5, atol=1e-6)
    assert hits_f == hits_u
    assert grads_f.keys() == grads_u.keys() and grads_f
    for name in grads_u:
        torch.testing.assert_close(grads_f[name], grads_u[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("layout", ["padded", "packed_rows"])
@pytest.mark.parametrize("chunk_rows", [1, 7, 16, None, 10_000])
def test_lora_loss_hits_and_adapter_gradients_equal_the_unfused_path(layout, chunk_rows, monkeypatch):
    model = get_peft_model(_llama(), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    batch = _batch(layout, untrained_row=True)
    n = _trained(batch)
    if chunk_rows == 16:
        assert n % 16 != 0  # a last, shorter chunk
    with torch.no_grad():  # predict the current token, so that some argmax predictions hit
        model.base_model.model.lm_head.weight.copy_(5 * model.base_model.model.model.embed_tokens.weight)
    fused = _run(model, batch, float(n), True, monkeypatch, chunk_rows)
    unfused = _run(model, batch, float(n), False, monkeypatch)
    assert any(".lora_" in name for name in fused[2])
    assert unfused[1] > 0
    _assert_same(fused, unfused)


def test_chunk_size_that_divides_the_trained_count_gives_the_same_result(monkeypatch):
    model = _llama()
    batch = _batch()
    n = _trained(batch)
    divisor = next(d for d in range(2, n) if n % d == 0)
    _assert_same(_run(model, batch, float(n), True, monkeypatch, divisor),
                 _run(model, batch, float(n), False, monkeypatch))


@pytest.mark.parametrize("tied", [False, True])
def test_full_fine_tuning_gradients_of_the_head_weight_equal_the_unfused_path(tied, monkeypatch):
    model = _llama(tied=tied)
    batch = _batch("packed_rows")
    n = _trained(batch)
    fused = _run(model, batch, float(2 * n), True, monkeypatch, 5)
    unfused = _run(model, batch, float(2 * n), False, monkeypatch)
    assert "lm_head.weight" in fused[2] or tied
    assert "model.embed_tokens.weight" in fused[2]
    _assert_same(fused, unfused)


def test_lm_head_in_modules_to_save_is_fused_and_trained(monkeypatch):
    model = get_peft_model(_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"]))
    batch = _batch()
    n = _trained(batch)
    fused = _run(model, batch, float(n), True, monkeypatch, 8)
    unfused = _run(model, batch, float(n), False, monkeypatch)
    assert any("modules_to_save" in name and "lm_head" in name for name in fused[2])
    _assert_same(fused, unfused)


def test_a_batch_without_trained_positions_gives_zero_loss_and_zero_gradients(monkeypatch):
    model = _llama()
    batch = _batch()
    batch["labels"][:] = IGNORE_INDEX
    loss, hits, grads = _run(model, batch, 1.0, True, monkeypatch, 4)
    assert loss.item() == 0.0 and hits == 0
    assert all(torch.count_nonzero(g) == 0 for g in grads.values())


def test_the_function_matches_linear_plus_cross_entropy_with_a_bias_in_float64():
    """gradcheck against finite differences, and the value against F.linear + F.cross_entropy."""
    torch.manual_seed(0)
    hidden = torch.randn(11, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(13, 6, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(13, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 13, (11,))
    loss, hits = ChunkedHeadCrossEntropy.apply(hidden, weight, bias, targets, 4)
    logits = F.linear(hidden, weight, bias)
    torch.testing.assert_close(loss, F.cross_entropy(logits, targets, reduction="sum"), rtol=1e-12, atol=1e-12)
    assert hits.item() == int((logits.argmax(-1) == targets).sum())
    assert torch.autograd.gradcheck(lambda h, w, b: ChunkedHeadCrossEntropy.apply(h, w, b, targets, 4)[0],
                                    (hidden, weight, bias))


def test_bf16_autocast_matches_the_unfused_path(monkeypatch):
    model = get_peft_model(_llama(), LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0))
    batch = _batch()
    n = float(_trained(batch))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_f, hits_f, grads_f = _run(model, batch, n, True, monkeypatch, 8)
        loss_u, hits_u, grads_u = _run(model, batch, n, False, monkeypatch)
    torch.testing.assert_close(loss_f, loss_u, rtol=1e-3, atol=1e-3)
    assert hits_f == hits_u
    for name in grads_u:
        torch.testing.assert_close(grads_f[name], grads_u[name], rtol=2e-2, atol=1e-4, msg=name)


def _saved_tensor_shapes(model, batch, n: float, parameters: set[int]) -> list[tuple[int, ...]]:
    """Shapes of every tensor autograd saves for the backward pass that is not a parameter."""
    shapes = []

    def pack(t):
        if t.untyped_storage().data_ptr() not in parameters:
            shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        causal_lm_loss_and_hits(model, batch, n, chunk_rows=8)
    return shapes


def test_no_tensor_of_vocabulary_width_is_saved_for_backward(monkeypatch):
    model = get_peft_model(_llama(), LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0))
    batch = _batch("packed_rows")
    n = _trained(batch)
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    fused = _saved_tensor_shapes(model, batch, float(n), parameters)
    assert fused and not [s for s in fused if VOCAB in s]
    assert (n, 32) in fused  # the hidden states at the trained positions, what the head needs
    with monkeypatch.context() as m:  # the unfused path does keep (positions, vocabulary) tensors
        m.setattr(loss_module, "_fusable_heads", lambda _model: [])
        unfused = _saved_tensor_shapes(model, batch, float(n), parameters)
    assert (n, VOCAB) in unfused


def _softcapped_gemma():
    torch.manual_seed(0)
    return Gemma2ForCausalLM(Gemma2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=128, final_logit_softcapping=0.5,
        pad_token_id=0)).float()


def _scaled_cohere():
    torch.manual_seed(0)
    return CohereForCausalLM(CohereConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, logit_scale=3.0, pad_token_id=0)).float()


@pytest.mark.parametrize("build", [_softcapped_gemma, _scaled_cohere])
def test_models_that_change_logits_after_the_head_are_not_fused(build, monkeypatch, caplog):
    model = build()
    with torch.no_grad():  # logits of a few units, where capping or scaling them matters
        model.get_output_embeddings().weight.mul_(50)
    batch = _batch()
    n = float(_trained(batch))
    with torch.no_grad():
        reference = model(**batch, num_items_in_batch=n).loss
        assert loss_module._fusable_heads(model) == []
        with monkeypatch.context() as m:
            calls = _count_fused_calls(m)
            loss, _ = causal_lm_loss_and_hits(model, batch, n)
        assert calls["n"] == 0
        torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)

        # Without the config check the head alone would give another loss; the model returning
        # something else than the head's output sends the step through the model's logits.
        with monkeypatch.context() as m:
            m.setattr(loss_module, "LOGIT_POSTPROCESSING", ())
            m.setattr(loss_module, "_WARNED", set())
            head_only = []
            original = ChunkedHeadCrossEntropy.apply
            m.setattr(ChunkedHeadCrossEntropy, "apply", lambda *a: head_only.append(original(*a)) or head_only[-1])
            guarded, _ = causal_lm_loss_and_hits(model, batch, n)
        assert len(head_only) == 1
        assert "computed from full logits" in caplog.text
        assert not torch.allclose(head_only[0][0] / n, reference, rtol=1e-3)
        torch.testing.assert_close(guarded, reference, rtol=1e-5, atol=1e-6)


def test_the_head_forward_is_restored_after_the_call_even_on_error(monkeypatch):
    model = _llama()
    batch = _batch()
    head = model.lm_head
    assert "forward" not in head.__dict__
    causal_lm_loss_and_hits(model, batch, 1.0)
    assert "forward" not in head.__dict__
    bad = dict(batch, input_ids=batch["input_ids"] + VOCAB)  # out of range: the embedding raises
    with pytest.raises(IndexError):
        causal_lm_loss_and_hits(model, bad, 1.0)
    assert "forward" not in head.__dict__
    keep = trained_positions(batch["labels"])
    assert model(input_ids=batch["input_ids"], logits_to_keep=keep).logits.shape == (int(keep.sum()), VOCAB)


def test_the_planner_counts_the_chunk_the_loss_uses():
    from tunesmith.plan import memory

    assert (memory.FUSED_HEAD_CHUNK_BYTES, memory.FUSED_HEAD_MIN_ROWS) == (loss_module.CHUNK_BYTES,
                                                                          loss_module.MIN_CHUNK_ROWS)


def test_a_hook_passing_the_heads_output_through_keeps_the_fused_path(monkeypatch):
    """DeepSpeed ZeRO-3 wraps every module's output in its own autograd function (to gather the
    weights again before the module's backward): same value, another tensor. The loss must flow
    through that wrapper, and a hook that changes the value must send the step down the unfused path."""
    model = get_peft_model(_llama(), LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0))
    batch = _batch()
    n = float(_trained(batch))
    unfused = _run(model, batch, n, False, monkeypatch)
    passed_through = []

    def pass_through(_module, _args, output):
        passed_through.append(True)
        return output.view_as(output)  # a new tensor with the same value, backpropagating through the view

    handle = model.base_model.model.lm_head.register_forward_hook(pass_through)
    try:
        _assert_same(_run(model, batch, n, True, monkeypatch, 8), unfused)
    finally:
        handle.remove()
    assert passed_through

    handle = model.base_model.model.lm_head.register_forward_hook(lambda _m, _a, output: output * 2)
    try:
        model.zero_grad(set_to_none=True)
        doubled, _ = causal_lm_loss_and_hits(model, batch, n, chunk_rows=8)
        reference = model(**batch, num_items_in_batch=n).loss
    finally:
        handle.remove()
    torch.testing.assert_close(doubled, reference, rtol=1e-5, atol=1e-6)
