"""The batching engine: sequences for different adapters share forward passes and still produce
exactly the tokens they produce alone; sampling, stop tokens and stop strings are per sequence."""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import pytest

from tunesmith.serve.config import ServeConfig
from tunesmith.serve.engine import SamplingParams
from tunesmith.serve.protocol import APIError
from tunesmith.serve.state import create_state

from serve_fixtures import prompt_ids
from serve_helpers import QUESTIONS, metric

GREEDY = SamplingParams(max_tokens=12, temperature=0.0)
FIXED_LENGTH = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


# The engine: the `state` fixture of tests/serve_fixtures.py (through this folder's conftest).


async def _drain(handle, count: int = 1) -> list[dict]:
    choices = [{"tokens": [], "text": "", "finish": None} for _ in range(count)]
    remaining = count
    while remaining:
        event = await asyncio.wait_for(handle.events.get(), timeout=60)
        if event.error is not None:
            raise event.error
        choice = choices[event.index]
        choice["tokens"].append(event.token_id)
        choice["text"] += event.text
        if event.finish_reason is not None:
            choice["finish"] = event.finish_reason
            remaining -= 1
    return choices


def _hold(engine):
    """Block the engine thread between steps until the returned event is set."""
    release, held = threading.Event(), threading.Event()
    engine.call(lambda: (held.set(), release.wait(30)))
    held.wait(10)
    return release


def _jobs(state):
    names = [None, "a1", "a2"]
    return [(state.resolve(name or state.base.name), prompt_ids(state, q))
            for q in QUESTIONS[:4] for name in names]


async def _one_by_one(state, jobs, params=GREEDY):
    return [(await _drain(state.engine.submit(target, [prompt], params)))[0] for target, prompt in jobs]


def test_mixed_adapter_batch_gives_the_same_tokens_as_one_by_one(state):
    jobs = _jobs(state)

    async def batched():
        release = _hold(state.engine)
        handles = [state.engine.submit(target, [prompt], FIXED_LENGTH) for target, prompt in jobs]
        assert state.engine.queued == len(jobs)
        release.set()
        return [c[0] for c in await asyncio.gather(*(_drain(h) for h in handles))]

    before = metric(state.metrics.render().decode(), "tunesmith_batch_size_bucket", le="8.0")
    together = asyncio.run(batched())
    # Every forward pass of that run held all 12 sequences (ignore_eos: none finished early).
    assert metric(state.metrics.render().decode(), "tunesmith_batch_size_bucket", le="8.0") == before
    alone = asyncio.run(_one_by_one(state, jobs, FIXED_LENGTH))
    assert [c["tokens"] for c in together] == [c["tokens"] for c in alone]
    assert [c["text"] for c in together] == [c["text"] for c in alone]
    # The adapters really change the answer, so the equality above compares different routes.
    base, a1, a2 = (tuple(c["tokens"]) for c in alone[:3])
    assert len({base, a1, a2}) == 3


def test_sequences_joining_a_running_batch_match_their_solo_runs(state):
    jobs = _jobs(state)[:6]
    long_params = dataclasses.replace(FIXED_LENGTH, max_tokens=20)

    async def staggered():
        first = state.engine.submit(jobs[0][0], [jobs[0][1]], long_params)
        events = []
        while len(events) < 5:  # the first sequence is 5 tokens in (its cache is longer) ...
            events.append(await asyncio.wait_for(first.events.get(), timeout=60))
        # ... when the others arrive with prompts of other lengths and join its batch.
        rest = [state.engine.submit(target, [prompt], GREEDY) for target, prompt in jobs[1:]]
        tail = await _drain(first)
        head = [e.token_id for e in events]
        return [head + tail[0]["tokens"]] + [c[0]["tokens"] for c in await asyncio.gather(*map(_drain, rest))]

    together = asyncio.run(staggered())
    alone = asyncio.run(_one_by_one(state, jobs[:1], long_params)) + asyncio.run(_one_by_one(state, jobs[1:]))
    assert together == [c["tokens"] for c in alone]


def test_seeded_sampling_does_not_depend_on_the_batch(state):
    target, prompt = state.resolve("a1"), prompt_ids(state, QUESTIONS[0])
    params = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, seed=1234)

    async def run():
        alone = await _drain(state.engine.submit(target, [prompt], params), 1)
        release = _hold(state.engine)
        crowd = [state.engine.submit(t, [p], GREEDY) for t, p in _jobs(state)[:5]]
        seeded = state.engine.submit(target, [prompt], params, n=3)
        release.set()
        together = await _drain(seeded, 3)
        await asyncio.gather(*map(_drain, crowd))
        return alone, together

    alone, together = asyncio.run(run())
    assert together[0]["tokens"] == alone[0]["tokens"]  # choice 0 uses the seed itself
    assert together[1]["tokens"] != together[0]["tokens"]  # choice i uses seed + i


def test_the_base_stops_at_end_of_turn_and_eos(state):
    tokenizer = state.base.tokenizer
    assert state.base.stop_ids == {tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id}
    assert state.resolve("a1").stop_ids == state.base.stop_ids  # the adapter's saved tokenizer agrees


def test_generation_stops_at_stop_tokens_unless_told_to_ignore_them(state):
    prompt = prompt_ids(state, QUESTIONS[1])
    free = asyncio.run(_one_by_one(state, [(state.base, prompt)], FIXED_LENGTH))[0]
    # Pretend the model's third token is its end-of-turn token: generation ends where it first appears.
    eot = free["tokens"][2]
    stopping = dataclasses.replace(state.base, stop_ids=frozenset({eot}))
    stopped = asyncio.run(_one_by_one(state, [(stopping, prompt)]))[0]
    assert stopped["finish"] == "stop" and stopped["tokens"] == free["tokens"][:free["tokens"].index(eot) + 1]
    ignoring = asyncio.run(_one_by_one(state, [(stopping, prompt)], dataclasses.replace(GREEDY, ignore_eos=True)))[0]
    assert ignoring["finish"] == "length" and ignoring["tokens"] == free["tokens"]


def test_stop_strings_cut_the_text(state):
    prompt = prompt_ids(state, QUESTIONS[2])
    free = asyncio.run(_one_by_one(state, [(state.resolve("a2"), prompt)], FIXED_LENGTH))[0]
    text = free["text"]
    assert len(text) >= 6
    stop = text[len(text) // 2:len(text) // 2 + 3]
    cut = asyncio.run(_one_by_one(state, [(state.resolve("a2"), prompt)],
                                  dataclasses.replace(FIXED_LENGTH, stop=(stop,))))
    assert cut[0]["finish"] == "stop" and cut[0]["text"] == text[:text.index(stop)]


def test_a_cancelled_request_leaves_the_batch(state):
    target, prompt = state.resolve("a1"), prompt_ids(state, QUESTIONS[3])
    params = SamplingParams(max_tokens=900, temperature=0.0, ignore_eos=True)

    async def run():
        handle = state.engine.submit(target, [prompt], params)
        seen = [await asyncio.wait_for(handle.events.get(), timeout=60) for _ in range(3)]
        handle.cancel()
        for _ in range(500):
            if state.engine.running == 0:
                break
            await asyncio.sleep(0.01)
        return seen

    seen = asyncio.run(run())
    assert state.engine.running == 0 and state.engine.idle
    assert seen[-1].completion_tokens < 900


def test_a_full_queue_refuses_with_429(adapter_dirs):
    state = create_state(ServeConfig(max_queue=2))
    state.engine.start()
    try:
        async def run():
            release = _hold(state.engine)
            prompt = prompt_ids(state, QUESTIONS[0])
            handles = [state.engine.submit(state.base, [prompt], GREEDY) for _ in range(2)]
            with pytest.raises(APIError) as info:
                state.engine.submit(state.base, [prompt], GREEDY)
            release.set()
            await asyncio.gather(*map(_drain, handles))
            return info.value

        error = asyncio.run(run())
        assert error.status == 429 and error.code == "queue_full"
    finally:
        state.engine.shutdown()
