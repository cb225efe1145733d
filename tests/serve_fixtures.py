"""Serving fixtures: two LoRA adapters on the default model, built once per session (the conftests
of tests/unit/serve and tests/e2e import them)."""

from __future__ import annotations

import pytest
from serve_helpers import build_adapter


@pytest.fixture(scope="session")
def adapter_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("serve-adapters")
    return {"a1": str(build_adapter(root / "a1", seed=1)), "a2": str(build_adapter(root / "a2", seed=2))}


@pytest.fixture(scope="module", name="state")
def engine_state(adapter_dirs):
    """tunesmith's own engine over the default model and the two adapters, started for one test
    module (each module gets its own, so one module's held or failed rows never reach another)."""
    from tunesmith.serve.config import ServeConfig
    from tunesmith.serve.state import create_state

    state = create_state(ServeConfig(adapters=adapter_dirs, max_batch_size=16, max_queue=64))
    state.engine.start()
    yield state
    state.engine.shutdown()


def prompt_ids(state, question: str) -> list[int]:
    """`question` as one user turn, rendered through the served base's chat template."""
    from tunesmith.chat.templates import render_prompt

    return render_prompt(state.base.tokenizer, [{"role": "user", "content": question}])
