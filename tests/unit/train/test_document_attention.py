"""Per-example attention for flattened CPU batches: the same outputs and gradients as the masked
square, the same loss and gradients as separate packed rows, and transformers' own path for
every call it cannot reproduce."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.modeling_utils import AttentionInterface

from tunesmith.chat.packing import PackedCollator, PackedRowsCollator, pack_examples
from tunesmith.train import document_attention
from tunesmith.train.batching import tokenize_rows
from tunesmith.train.config import TrainSettings
from tunesmith.train.document_attention import (DocumentCausalAttention, attends_per_document, document_spans,
                                                runs_per_document, use_document_attention)
from tunesmith.train.loss import causal_lm_loss

from train_fixtures import _ticket_rows

SPANS = [(0, 37), (37, 38), (38, 101), (101, 160)]


def _masked_square(query, key, value, spans, scale):
    """The reference: one SDPA call over the whole sequence with a block-diagonal causal mask."""
    length = query.shape[2]
    example = torch.empty(length, dtype=torch.long)
    for i, (start, end) in enumerate(spans):
        example[start:end] = i
    mask = (example[:, None] == example[None, :]) & torch.ones(length, length, dtype=torch.bool).tril()
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale, enable_gqa=True)
    return out.transpose(1, 2)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6), (torch.bfloat16, 3e-2)])
def test_per_example_attention_equals_the_masked_square(dtype, tol):
    gen = torch.Generator().manual_seed(0)
    length = SPANS[-1][1]
    # the query as transformers passes it: a transposed view of (batch, length, heads, dim)
    query = torch.randn(1, length, 6, 16, generator=gen, dtype=dtype).transpose(1, 2).requires_grad_()
    key = torch.randn(1, 2, length, 16, generator=gen, dtype=dtype, requires_grad=True)
    value = torch.randn(1, 2, length, 16, generator=gen, dtype=dtype, requires_grad=True)
    upstream = torch.randn(1, length, 6, 16, generator=gen, dtype=dtype)

    ours = DocumentCausalAttention.apply(query, key, value, SPANS, 0.3)
    our_grads = torch.autograd.grad((ours * upstream).sum(), (query, key, value))
    reference = _masked_square(query, key, value, SPANS, 0.3)
    reference_grads = torch.autograd.grad((reference * upstream).sum(), (query, key, value))

    assert ours.shape == (1, length, 6, 16) and ours.is_contiguous()
    torch.testing.assert_close(ours, reference, rtol=tol, atol=tol)
    for mine, theirs in zip(our_grads, reference_grads):
        torch.testing.assert_close(mine, theirs, rtol=tol, atol=tol)
    # the check can fail: attention across the first boundary changes the second example
    leaking = DocumentCausalAttention.apply(query, key, value, [(0, 38)] + SPANS[2:], 0.3)
    assert not torch.allclose(leaking[:, 37], reference[:, 37])


def test_spans_come_from_the_cumulative_lengths():
    assert document_spans(torch.tensor([0, 5, 5, 9], dtype=torch.int32)) == [(0, 5), (5, 9)]


def _examples(tokenizer, n=12):
    return tokenize_rows(_ticket_rows(n), tokenizer, TrainSettings(max_seq_len=256), "t").examples


def _loss_and_grads(model, batch, num_items):
    model.zero_grad()
    loss = causal_lm_loss(model, dict(batch), num_items)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_a_flattened_batch_trains_like_separate_packed_rows(tiny_model, monkeypatch):
    """The same examples as one flattened sequence (per-example attention) and as packed rows
    (transformers' masked SDPA): the same loss and gradients, and per-example attention ran."""
    use_document_attention()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="sdpa")
    model.train()  # attention dropout is 0 in this config; the LM still runs its training paths
    examples = _examples(tokenizer)
    rows = PackedRowsCollator(pad_token_id=tokenizer.pad_token_id)(pack_examples(examples, 256))
    flat = PackedCollator(return_flash_attn_kwargs=True)(examples)
    num_items = float((rows["labels"][:, 1:] != -100).sum())
    assert num_items == float((flat["labels"][:, 1:] != -100).sum())

    calls = []
    real_apply = DocumentCausalAttention.apply
    monkeypatch.setattr(DocumentCausalAttention, "apply", lambda *a: calls.append(a[3]) or real_apply(*a))
    loss_rows, grads_rows = _loss_and_grads(model, rows, num_items)
    assert not calls  # rows carry no boundaries: transformers' masked path
    loss_flat, grads_flat = _loss_and_grads(model, flat, num_items)
    assert len(calls) == model.config.num_hidden_layers and len(calls[0]) == len(examples)

    torch.testing.assert_close(loss_flat, loss_rows, rtol=1e-5, atol=1e-6)
    assert grads_flat.keys() == grads_rows.keys()
    for name, grad in grads_rows.items():
        torch.testing.assert_close(grads_flat[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_calls_it_cannot_reproduce_keep_transformers_path(tiny_model):
    use_document_attention()
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="sdpa")
    module = model.model.layers[0].self_attn
    query = torch.zeros(1, 4, 10, 8)
    key = value = torch.zeros(1, 2, 10, 8)
    flat = {"cu_seq_lens_q": torch.tensor([0, 4, 10]), "cu_seq_lens_k": torch.tensor([0, 4, 10])}
    assert runs_per_document(module, query, key, value, 0.0, flat)
    assert not runs_per_document(module, query, key, value, 0.0, {})  # no boundaries: a plain batch
    assert not runs_per_document(module, query, key, value, 0.1, flat)  # attention dropout
    assert not runs_per_document(module, query, key, value, 0.0, {**flat, "sliding_window": 4})
    assert not runs_per_document(module, query, key, value, 0.0, {**flat, "softcap": 30.0})
    assert not runs_per_document(module, query, key, value, 0.0, {**flat, "cache": object()})  # paged decoding
    assert not runs_per_document(module, query, key, value, 0.0, {**flat, "cu_seq_lens_k": torch.tensor([0, 5, 10])})
    assert not runs_per_document(module, query, key, value, 0.0, {**flat, "cu_seq_lens_q": torch.tensor([0, 4, 9])})
    assert not runs_per_document(module, torch.zeros(2, 4, 10, 8), key, value, 0.0, flat)  # two rows


def test_only_cpu_sdpa_models_that_pass_boundaries_train_flattened(tiny_model):
    sdpa = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="sdpa")
    eager = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="eager")
    assert attends_per_document(sdpa, "cpu")
    assert not attends_per_document(sdpa, "cuda:0")
    assert not attends_per_document(eager, "cpu")  # eager attention would compute the full square
    assert getattr(AttentionInterface._global_mapping["sdpa"], document_attention._WRAPPED)
    use_document_attention()  # idempotent: wrapped once
    wrapped = AttentionInterface._global_mapping["sdpa"]
    assert not hasattr(getattr(wrapped, document_attention._WRAPPED), document_attention._WRAPPED)
