"""Sampling parameters are normalised at the edge, and a row that fails to sample fails alone:
every other row of its batch finishes exactly as it does when run by itself."""

from __future__ import annotations

import asyncio
import math
import threading

import pytest
from serve_fixtures import prompt_ids
from serve_helpers import QUESTIONS

from tunesmith.serve.engine import SamplingParams
from tunesmith.serve.protocol import (APIError, ChatCompletionRequest, CompletionRequest, GenerateRequest,
                                      parse_json_object, parse_request)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("cls, base", [(ChatCompletionRequest, CHAT), (CompletionRequest, {"model": "m", "prompt": "x"}),
                                       (GenerateRequest, {"prompt": "x"})])
@pytest.mark.parametrize("field, value", [("temperature", 1e-300), ("temperature", 1e-45), ("top_p", 1e-300),
                                          ("top_p", 1e-46)])
def test_values_that_vanish_in_float32_mean_greedy(cls, base, field, value):
    req = parse_request(cls, {**base, field: value})
    assert req.temperature == 0.0
    assert req.top_p in (None, 1.0)


def test_ordinary_values_are_kept():
    req = parse_request(ChatCompletionRequest, {**CHAT, "temperature": 0.7, "top_p": 0.9})
    assert (req.temperature, req.top_p) == (0.7, 0.9)


@pytest.mark.parametrize("body", [b'{"temperature": 1e999}', b'{"top_p": -1e999}', b'{"seed": 1, "x": [1e400]}'])
def test_numbers_that_overflow_to_infinity_are_400(body):
    with pytest.raises(APIError) as info:
        parse_json_object(body)
    assert info.value.status == 400 and info.value.code == "invalid_json"


# --------------------------------------------------------------------------- the engine


# The engine: the `state` fixture of tests/serve_fixtures.py (through this folder's conftest).


async def _outcome(handle) -> tuple[list[int], APIError | None]:
    tokens: list[int] = []
    while True:
        event = await asyncio.wait_for(handle.events.get(), timeout=60)
        if event.error is not None:
            return tokens, event.error
        tokens.append(event.token_id)
        if event.finish_reason is not None:
            return tokens, None


def _hold(engine):
    release, held = threading.Event(), threading.Event()
    engine.call(lambda: (held.set(), release.wait(30)))
    held.wait(10)
    return release


# NaN reaches the engine only through its Python API (the edge refuses it); it makes sampling raise.
POISON = SamplingParams(max_tokens=8, temperature=math.nan)


@pytest.mark.parametrize("poison_at", ["prefill", "decode"])
def test_a_row_that_fails_to_sample_fails_alone(state, poison_at, monkeypatch):
    jobs = [(state.resolve(name or state.base.name), prompt_ids(state, q), params)
            for q, name, params in [
                (QUESTIONS[0], None, SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)),
                (QUESTIONS[1], "a1", SamplingParams(max_tokens=8, temperature=0.8, top_p=0.9, seed=7,
                                                     ignore_eos=True)),
                (QUESTIONS[2], "a2", SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)),
                (QUESTIONS[3], None, SamplingParams(max_tokens=8, temperature=1.0, seed=3, ignore_eos=True))]]
    poisoned_prompt = prompt_ids(state, QUESTIONS[4])

    async def alone():
        return [await _outcome(state.engine.submit(t, [p], params)) for t, p, params in jobs]

    async def together():
        release = _hold(state.engine)
        handles = [state.engine.submit(t, [p], params) for t, p, params in jobs]
        if poison_at == "prefill":
            bad = state.engine.submit(state.resolve("a1"), [poisoned_prompt], POISON)
        else:
            # A good row that turns bad at its third step: the failure happens mid-batch, in decode.
            bad = state.engine.submit(state.resolve("a1"), [poisoned_prompt],
                                      SamplingParams(max_tokens=8, temperature=0.5, seed=1, ignore_eos=True))
            seq = state.engine._waiting[-1]
            original = seq.generator

            class Failing:
                calls = 0

            def failing_multinomial(probs, num, generator=None, _real=__import__("torch").multinomial):
                if generator is original:
                    Failing.calls += 1
                    if Failing.calls >= 3:
                        raise RuntimeError("injected sampling failure")
                return _real(probs, num, generator=generator)

            monkeypatch.setattr("tunesmith.serve.engine.torch.multinomial", failing_multinomial)
        release.set()
        return await asyncio.gather(*map(_outcome, handles)), await _outcome(bad)

    expected = asyncio.run(alone())
    others, (bad_tokens, bad_error) = asyncio.run(together())
    assert [tokens for tokens, _ in others] == [tokens for tokens, _ in expected]
    assert all(error is None for _, error in others)
    assert bad_error is not None and bad_error.status == 500
    assert len(bad_tokens) == (0 if poison_at == "prefill" else 2)
    # The engine is healthy afterwards: the batch emptied and the next request runs.
    again = asyncio.run(alone())
    assert [t for t, _ in again] == [t for t, _ in expected]
    assert state.engine.idle


@pytest.mark.parametrize("body", [b'{"prompt": "a\\udfff"}', b'{"messages": [{"content": "\\ud800"}]}'])
def test_lone_surrogate_escapes_are_400_and_pairs_are_text(body):
    with pytest.raises(APIError) as info:
        parse_json_object(body)
    assert info.value.status == 400 and "lone surrogate" in info.value.message
    assert parse_json_object(b'{"prompt": "\\ud83d\\ude00"}') == {"prompt": "\U0001F600"}
