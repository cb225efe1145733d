"""The real vLLM behind tunesmith, on a GPU: greedy answers equal tunesmith's own engine's for
the base and for adapters given at start, and a hot-loaded adapter answers like it does on
tunesmith's engine. Skipped without vLLM and a CUDA GPU (the GPU check runs it)."""

from __future__ import annotations

import shutil

import pytest
import torch

from tunesmith.serve.config import EngineOptions, ServeConfig

from serve_helpers import QUESTIONS, greedy_answers

pytestmark = pytest.mark.skipif(shutil.which("vllm") is None or not torch.cuda.is_available(),
                                reason="needs the `vllm` command and a CUDA GPU")
BASE = "tunesmith-demo-4m"
KEY = "vllm-key"


def test_greedy_answers_equal_tunesmiths_engine(root):
    common = dict(adapters={"a1": str(root / "a1")}, adapter_root=root, api_key=KEY, log_level="warning")
    models = [BASE, "a1", "a2"]
    reference = greedy_answers(ServeConfig(**common), models, api_key=KEY, load=("a2", "a2"), timeout=300)
    # fp32 like tunesmith's engine (vLLM would pick fp16 for an fp32 checkpoint); eager: a faster start
    options = EngineOptions(extra_args=["--dtype", "float32", "--enforce-eager", "--gpu-memory-utilization", "0.3"])
    vllm = greedy_answers(ServeConfig(engine="vllm", engine_options=options, max_batch_size=8, **common), models,
                          api_key=KEY, load=("a2", "a2"), timeout=300)
    assert vllm == reference
    assert any(reference[BASE, q] != reference["a1", q] for q in QUESTIONS)
