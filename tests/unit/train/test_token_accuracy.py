"""Mean token accuracy: the share of trained tokens whose argmax prediction is the label, read
from the logits the loss already computed, equal to a direct computation from full logits."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunesmith.chat.masking import IGNORE_INDEX
from tunesmith.chat.packing import PaddedCollator
from tunesmith.train import batching
from tunesmith.train.loss import causal_lm_loss, causal_lm_loss_and_hits
from tunesmith.train.sft import SupervisedObjective


def _batch(model):
    """A padded batch whose labels the model gets right at about half of the trained tokens, so
    the accuracy is neither 0 nor 1 (a random tiny model predicts almost nothing by chance)."""
    g = torch.Generator().manual_seed(3)
    examples = []
    for length, prompt in ((12, 4), (25, 15), (17, 3), (9, 5)):
        ids = torch.randint(3, model.config.vocab_size, (length,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    batch = PaddedCollator(pad_token_id=0)(examples)
    with torch.no_grad():
        predicted = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.argmax(-1)
    labels = batch["labels"].clone()
    trained = labels[:, 1:] != IGNORE_INDEX
    take = trained & (torch.rand(trained.shape, generator=g) < 0.5)
    # Logits at position t predict label t+1, and a causal model's logits at t do not depend on
    # token t+1, so setting a label to the model's own prediction makes that token a hit.
    labels[:, 1:][take] = predicted[:, :-1][take]
    batch["labels"] = labels
    return batch


def _direct_hits(model, batch) -> tuple[int, int]:
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    trained = targets != IGNORE_INDEX
    return int((logits[:, :-1].argmax(-1)[trained] == targets[trained]).sum()), int(trained.sum())


def test_hits_from_the_trained_positions_equal_a_direct_count(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    batch = _batch(model)
    expected, trained = _direct_hits(model, batch)
    assert 0 < expected < trained  # the test can tell a wrong count from a right one
    with torch.no_grad():
        loss, hits = causal_lm_loss_and_hits(model, batch, float(trained))
        assert torch.equal(loss, causal_lm_loss(model, batch, float(trained)))
    assert hits == expected


def test_hits_are_the_same_when_the_model_returns_every_position(tiny_model, monkeypatch):
    """Models whose forward cannot take the boolean mask return full logits; the count is the same."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    batch = _batch(model)
    expected, trained = _direct_hits(model, batch)
    older = types.ModuleType("transformers.models.llama.modeling_llama_older")
    monkeypatch.setitem(sys.modules, older.__name__, older)

    def forward(self, *args, logits_to_keep=0, **kwargs):
        assert isinstance(logits_to_keep, int)
        return super(type(self), self).forward(*args, **kwargs)

    model.__class__ = type("OlderLlama", (type(model),), {"forward": forward, "__module__": older.__name__})
    with torch.no_grad():
        _, hits = causal_lm_loss_and_hits(model, batch, float(trained))
    assert hits == expected


def test_sft_objective_reports_mean_token_accuracy_over_the_step(tiny_model):
    """Summed over micro-batches and divided by the step's trained tokens, as the loss is."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    full = _batch(model)
    expected, trained = _direct_hits(model, full)
    halves = []
    for rows in (slice(0, 2), slice(2, 4)):
        tensors = {k: v[rows] for k, v in full.items()}
        halves.append(batching.Batch(tensors=tensors, num_trained_tokens=int((tensors["labels"][:, 1:] != IGNORE_INDEX).sum())))
    objective = SupervisedObjective(settings=None)
    norms = objective.normalisers(halves)
    sums: dict[str, float] = {}
    with torch.no_grad():
        for batch in halves:
            _, stats = objective.loss(model, batch, norms, "cpu")
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + value
    figures = objective.summarise(sums, norms)
    assert norms["tokens"] == trained
    assert figures["mean_token_accuracy"] == pytest.approx(expected / trained)
