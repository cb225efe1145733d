"""The engine on a CUDA device, including a 4-bit (bitsandbytes) base with LoRA adapters on top."""

from __future__ import annotations

import asyncio

import pytest

from tunesmith.chat.templates import render_prompt
from tunesmith.models.config import ModelConfig
from tunesmith.serve.config import ServeConfig
from tunesmith.serve.engine import SamplingParams
from tunesmith.serve.state import create_state

pytestmark = pytest.mark.gpu


async def _generate(state, jobs, params):
    async def drain(handle):
        tokens, finish = [], None
        while finish is None:
            event = await asyncio.wait_for(handle.events.get(), timeout=120)
            assert event.error is None
            tokens.append(event.token_id)
            finish = event.finish_reason
        return tokens, finish

    handles = [state.engine.submit(target, [prompt], params) for target, prompt in jobs]
    return await asyncio.gather(*map(drain, handles))


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_mixed_adapter_batches_generate_on_cuda(adapter_dirs, quantization):
    state = create_state(ServeConfig(model=ModelConfig(quantization=quantization), adapters=adapter_dirs,
                                     device="cuda"))
    state.engine.start()
    try:
        prompt = render_prompt(state.base.tokenizer, [{"role": "user", "content": "What is a generator?"}])
        jobs = [(state.resolve(name), prompt) for name in (state.base.name, "a1", "a2")]
        params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
        results = asyncio.run(_generate(state, jobs, params))
        assert all(len(tokens) == 8 and finish == "length" for tokens, finish in results)
        assert len({tuple(tokens) for tokens, _ in results}) == 3
        sampled = asyncio.run(_generate(state, jobs[1:2] * 2, SamplingParams(max_tokens=8, seed=3)))
        assert sampled[0][0] == sampled[1][0]  # same seed, same tokens, on the GPU generator too
    finally:
        state.engine.shutdown()
