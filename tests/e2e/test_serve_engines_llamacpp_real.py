"""The real llama-server behind tunesmith: greedy answers equal tunesmith's own engine's, for the
base and for an adapter (converted to a GGUF LoRA and applied per request), on the f16 GGUF that
`tunesmith export gguf` writes. Skipped when no llama-server binary is available (`make
llama-server` builds one)."""

from __future__ import annotations

import httpx
import pytest

from tunesmith.serve.config import EngineOptions, ServeConfig
from tunesmith.serve.engines.llamacpp import find_llama_server

from serve_helpers import QUESTIONS, LiveServer, build_adapter, greedy_answers

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


def test_greedy_answers_equal_tunesmiths_engine(root, f16_gguf, tmp_path, monkeypatch):
    """Also with a per-module rank (llama.cpp scales each pair by alpha / its own rank), and with a
    key and a route prefix for llama-server left in the user's shell (tunesmith replaces the one and
    drops the other; either would make every request fail)."""
    monkeypatch.setenv("LLAMA_API_KEY", "a-key-for-another-llama-server")
    monkeypatch.setenv("LLAMA_ARG_API_PREFIX", "/elsewhere")
    build_adapter(tmp_path / "ranks", seed=7, rank_pattern={"v_proj": 8})
    adapters = {"a1": str(root / "a1"), "ranks": str(tmp_path / "ranks")}
    names = [BASE, "a1", "ranks"]
    reference = greedy_answers(ServeConfig(adapters=adapters, log_level="warning"), names)
    llama = greedy_answers(ServeConfig(engine="llama.cpp", adapters=adapters, log_level="warning", max_batch_size=4,
                                 engine_options=EngineOptions(gguf=f16_gguf, llama_server=BINARY)), names)
    assert llama == reference
    for name in ("a1", "ranks"):  # each adapter is really applied
        assert any(reference[BASE, q] != reference[name, q] for q in QUESTIONS)


def test_an_adapter_loaded_at_runtime_answers_like_tunesmiths_engine_and_nothing_fails(root, f16_gguf):
    """A runtime load starts a second llama-server holding the new adapter and switches to it;
    base requests sent all along never fail and keep their answers."""
    import threading

    reference = greedy_answers(ServeConfig(adapters={"a1": str(root / "a1")}, log_level="warning"), [BASE, "a1"])
    cfg = ServeConfig(engine="llama.cpp", log_level="warning", max_batch_size=4, adapter_root=root, api_key="k",
                      engine_options=EngineOptions(gguf=f16_gguf, llama_server=BINARY))
    auth = {"Authorization": "Bearer k"}
    failures, answers, done = [], [], threading.Event()

    def hammer(url: str) -> None:
        with httpx.Client(base_url=url, headers=auth, timeout=120) as client:
            while not done.is_set():
                question = QUESTIONS[len(answers) % len(QUESTIONS)]
                response = client.post("/v1/chat/completions", json={
                    "model": BASE, "messages": [{"role": "user", "content": question}],
                    "temperature": 0, "max_tokens": 16})
                if response.status_code != 200:
                    failures.append(response.text)
                else:
                    answers.append((question, response.json()["choices"][0]["message"]["content"]))

    with LiveServer(cfg) as server, httpx.Client(base_url=server.url, headers=auth, timeout=120) as http:
        clients = [threading.Thread(target=hammer, args=(server.url,)) for _ in range(2)]
        for thread in clients:
            thread.start()
        loaded = http.post("/v1/load_lora_adapter", json={"lora_name": "a1", "lora_path": "a1"})
        assert loaded.status_code == 200, loaded.text
        tuned = {}
        for question in QUESTIONS:
            response = http.post("/v1/chat/completions", json={
                "model": "a1", "messages": [{"role": "user", "content": question}],
                "temperature": 0, "max_tokens": 16})
            assert response.status_code == 200, response.text
            tuned[question] = response.json()["choices"][0]["message"]["content"]
        done.set()
        for thread in clients:
            thread.join(120)
    assert failures == []
    assert answers and all(answer == reference[BASE, question] for question, answer in answers)
    assert tuned == {question: reference["a1", question] for question in QUESTIONS}
