"""Evaluation's batched decoding drops rows that have finished, and still gives each row exactly
the answer `transformers`' `generate` (which keeps finished rows in the batch) and one-prompt-at-
a-time generation give it. Runs on the embedded demo model, whose base answers stop at varied
steps or run to the length limit: the batches below mix both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunesmith.chat.templates import render_prompt
from tunesmith.chat.tokens import stop_token_ids
from tunesmith.eval.config import GenerationSettings
from tunesmith.eval.generate import EvalExample, generate
from tunesmith.eval.generate_loop import DecodeTrace, Sampling, decode_batch
from tunesmith.models import default_model_path

TICKETS = Path(__file__).resolve().parents[3] / "examples" / "data" / "tickets" / "test.jsonl"
MAX_NEW = 32


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The 4M-parameter model runs fastest on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_and_tokenizer():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = default_model_path()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def prompts(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    rows = [json.loads(line)["messages"] for line in TICKETS.read_text().splitlines()[:6]]
    return [render_prompt(tokenizer, messages[:-1]) for messages in rows]


def _left_padded(prompts, pad_id):
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    return ids, mask


def _hf_generate(model, ids, mask, stops, pad_id, **sampling):
    """The previous implementation: `generate` on the whole batch, cut at the first stop id."""
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False,
                         eos_token_id=stops, pad_token_id=pad_id, temperature=None, top_p=None, top_k=None, **sampling)
    answers = []
    for row in out[:, ids.size(1):].tolist():
        cut = next((j for j, t in enumerate(row) if t in stops), None)
        answers.append((row if cut is None else row[:cut], cut is not None))
    return answers


def _ours(model, ids, mask, stops, trace=None, **sampling):
    rows = decode_batch(model, ids, mask, max_new_tokens=MAX_NEW, stop_ids=stops, sampling=Sampling(**sampling),
                        trace=trace)
    return [(r.tokens, r.stopped) for r in rows]


def test_greedy_answers_equal_generate_and_one_at_a_time(model_and_tokenizer, prompts):
    model, tokenizer = model_and_tokenizer
    stops = stop_token_ids(tokenizer, model.generation_config)
    pad_id = tokenizer.pad_token_id
    ids, mask = _left_padded(prompts, pad_id)
    ours = _ours(model, ids, mask, stops)
    # The batch really mixes rows that stop at different steps with rows that run to the limit.
    stop_lengths = {len(tokens) for tokens, stopped in ours if stopped}
    assert len(stop_lengths) >= 2 and any(not stopped for _, stopped in ours), ours
    assert ours == _hf_generate(model, ids, mask, stops, pad_id)
    one_at_a_time = [_ours(model, *_left_padded([p], pad_id), stops)[0] for p in prompts]
    assert ours == one_at_a_time
    assert one_at_a_time == [_hf_generate(model, *_left_padded([p], pad_id), stops, pad_id)[0] for p in prompts]


def test_finished_rows_are_not_computed(model_and_tokenizer, prompts):
    """Count the rows every forward pass embeds: after the prefill, only rows still generating."""
    model, tokenizer = model_and_tokenizer
    stops = stop_token_ids(tokenizer, model.generation_config)
    ids, mask = _left_padded(prompts, tokenizer.pad_token_id)
    embedded_rows: list[int] = []
    hook = model.get_input_embeddings().register_forward_hook(
        lambda module, args, output: embedded_rows.append(args[0].size(0)))
    trace = DecodeTrace()
    try:
        answers = _ours(model, ids, mask, stops, trace=trace)
    finally:
        hook.remove()
    # Step s (0 = the prefill) computes exactly the rows whose answer has not finished before s:
    # a row that stopped after n answer tokens took part in steps 0..n, one that hit the limit in all.
    steps_taken = [len(tokens) + 1 if stopped else MAX_NEW for tokens, stopped in answers]
    expected = [sum(1 for taken in steps_taken if taken > step) for step in range(max(steps_taken))]
    assert embedded_rows == expected == trace.rows_per_forward
    assert sum(embedded_rows) < len(prompts) * len(embedded_rows)  # less than generate's full batch every step


def test_repetition_penalty_counts_a_rows_own_tokens_not_padding(model_and_tokenizer, prompts):
    model, tokenizer = model_and_tokenizer
    stops = stop_token_ids(tokenizer, model.generation_config)
    pad_id = tokenizer.pad_token_id
    batched = _ours(model, *_left_padded(prompts, pad_id), stops, repetition_penalty=1.3)
    alone = [_hf_generate(model, *_left_padded([p], pad_id), stops, pad_id, repetition_penalty=1.3)[0] for p in prompts]
    assert batched == alone
    assert batched != _ours(model, *_left_padded(prompts, pad_id), stops)  # the penalty changed something


def test_eval_generate_is_reproducible_when_sampling(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    rows = [json.loads(line)["messages"] for line in TICKETS.read_text().splitlines()[:6]]
    examples = [EvalExample(index=i, messages=m, prompt=m[:-1], reference=m[-1]["content"]) for i, m in enumerate(rows)]
    settings = GenerationSettings(max_new_tokens=24, batch_size=4, do_sample=True, temperature=1.2, top_k=50,
                                  top_p=0.9, seed=7)
    first = generate(model, tokenizer, examples, settings, show_progress=False)
    again = generate(model, tokenizer, examples, settings, show_progress=False)
    other_seed = generate(model, tokenizer, examples, settings.model_copy(update={"seed": 8}), show_progress=False)
    assert [g.text for g in first] == [g.text for g in again]
    assert [g.text for g in first] != [g.text for g in other_seed]
    greedy = generate(model, tokenizer, examples, GenerationSettings(max_new_tokens=24, batch_size=4),
                      show_progress=False)
    assert all(g.num_tokens <= 24 for g in greedy + first)
