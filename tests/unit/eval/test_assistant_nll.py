"""The answer perplexity's negative log-likelihoods are computed with logits at the answer
positions only, and equal a direct computation from the model's full logits: per example, the
summed cross-entropy of the reference answer's trained tokens and their count, in batches that
pad examples of different lengths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunesmith.chat.masking import IGNORE_INDEX, tokenize_conversation
from tunesmith.eval.generate import EvalExample, assistant_nll
from tunesmith.models import default_model_path

TICKETS = Path(__file__).resolve().parents[3] / "examples" / "data" / "tickets" / "test.jsonl"


def _examples(n: int) -> list[EvalExample]:
    out = []
    for i, line in enumerate(TICKETS.read_text().splitlines()[:n]):
        messages = json.loads(line)["messages"]
        out.append(EvalExample(index=i, messages=messages, prompt=messages[:-1], reference=messages[-1]["content"]))
    return out


def _direct(model, tokenizer, example: EvalExample) -> tuple[float, int]:
    conv = tokenize_conversation(tokenizer, example.messages)
    start, end = conv.assistant_spans[-1]
    labels = torch.full((len(conv.input_ids),), IGNORE_INDEX)
    labels[start:end] = torch.tensor(conv.input_ids[start:end])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([conv.input_ids])).logits[0].double()
    nll = torch.nn.functional.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE_INDEX, reduction="sum")
    return float(nll), int((labels[1:] != IGNORE_INDEX).sum())


@pytest.mark.parametrize("batch_size", [1, 3])
def test_nll_at_answer_positions_equals_full_logits(batch_size):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(default_model_path(), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    examples = _examples(5)
    got = assistant_nll(model, tokenizer, examples, batch_size=batch_size)
    assert len(got) == len(examples)
    for example, (nll, count) in zip(examples, got):
        want_nll, want_count = _direct(model, tokenizer, example)
        assert count == want_count > 0
        assert nll == pytest.approx(want_nll, rel=1e-5)
