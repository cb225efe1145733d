"""The real llama-server behind tunesmith: greedy answers equal tunesmith's own engine's, for the
base and for an adapter (converted to a GGUF LoRA and applied per request), on the f16 GGUF that
`tunesmith export gguf` writes. Skipped when no llama-server binary is available (`make
llama-server` builds one)."""

from __future__ import annotations

import pytest

from tunesmith.serve.config import EngineOptions, ServeConfig
from tunesmith.serve.engines.llamacpp import find_llama_server

from serve_helpers import QUESTIONS, greedy_answers

BINARY = find_llama_server()
pytestmark = pytest.mark.skipif(BINARY is None, reason="no llama-server on PATH or in ~/.cache/tunesmith/llama-server "
                                                       "(build one with `make llama-server`)")
BASE = "tunesmith-demo-4m"


@pytest.fixture(scope="module")
def f16_gguf(tmp_path_factory):
    from tunesmith.export.gguf import write_gguf
    from tunesmith.models.config import ModelConfig
    from tunesmith.models.loading import load_model, load_tokenizer

    path = tmp_path_factory.mktemp("gguf") / "base-f16.gguf"
    write_gguf(load_model(ModelConfig(), device="cpu"), load_tokenizer(ModelConfig()), path, "f16", BASE,
               say=lambda line: None)
    return path


def test_greedy_answers_equal_tunesmiths_engine(root, f16_gguf):
    adapters = {"a1": str(root / "a1")}
    reference = greedy_answers(ServeConfig(adapters=adapters, log_level="warning"), [BASE, "a1"])
    llama = greedy_answers(ServeConfig(engine="llama.cpp", adapters=adapters, log_level="warning", max_batch_size=4,
                                 engine_options=EngineOptions(gguf=f16_gguf, llama_server=BINARY)), [BASE, "a1"])
    assert llama == reference
    assert any(reference[BASE, q] != reference["a1", q] for q in QUESTIONS)  # the adapter is really applied
