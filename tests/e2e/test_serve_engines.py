"""`--engine vllm` and `--engine llama.cpp` through tunesmith's API, against a stand-in process
that speaks the engines' HTTP API (tests/e2e/engine_standin.py), started from the command line
tunesmith builds: the right model/adapter reaches the engine, streaming works, the engine's
errors become tunesmith's envelopes, and a dead or silent engine fails requests instead of
hanging them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest

from tunesmith.serve.config import EngineOptions, ServeConfig

from serve_helpers import LiveServer

KEY = "engine-key"
BASE = "tunesmith-demo-4m"
STANDIN = Path(__file__).with_name("engine_standin.py")


@pytest.fixture(scope="module")
def standin(tmp_path_factory, root):
    """An executable that runs the stand-in with this interpreter, and the log it writes."""
    folder = tmp_path_factory.mktemp("standin")
    wrapper = folder / "engine"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDIN}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, folder / "log.jsonl"


def _log(path: Path, kind: str) -> list[dict]:
    return [e["body"] for e in map(json.loads, path.read_text().splitlines()) if e["kind"] == kind]


def _server(root, standin, monkeypatch_env, engine: str, max_queue: int = 256, **options):
    wrapper, log = standin
    monkeypatch_env.setenv("STANDIN_LOG", str(log))
    executable = {"vllm": {"vllm": str(wrapper)}, "llama.cpp": {"llama_server": str(wrapper)}}[engine]
    cfg = ServeConfig(engine=engine, adapters={"a1": str(root / "a1")}, adapter_root=root, api_key=KEY,
                      log_level="warning", max_batch_size=4, max_queue=max_queue,
                      engine_options=EngineOptions(startup_timeout=60, **executable, **options))
    return LiveServer(cfg)


@pytest.fixture()
def http_for():
    clients = []

    def make(server):
        client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def _chat(http, model, **extra):
    return http.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}],
                                                   "max_tokens": 3, **extra})


# --------------------------------------------------------------------------- vLLM


USERS_VLLM_KEY = "a-key-for-another-vllm"


@pytest.fixture(scope="module")
def vllm_server(root, standin):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_API_KEY", USERS_VLLM_KEY)  # left in the user's shell: vLLM must not require it
        server = _server(root, standin, mp, "vllm", request_timeout=2.0)
        with server:
            yield server


def test_vllm_starts_with_lora_flags_on_loopback(vllm_server, standin, root):
    argv = _log(standin[1], "start")[-1]["argv"]
    assert argv[:2] == ["serve", vllm_server.state.served_model]
    def value(flag: str) -> str:
        return argv[argv.index(flag) + 1]

    assert value("--host") == "127.0.0.1" and value("--served-model-name") == BASE
    assert "--enable-lora" in argv and value("--max-loras") == "8" and value("--max-num-seqs") == "4"
    # runtime loading is on (--adapter-root), so vLLM reserves the server's rank limit, in a bucket it accepts
    assert value("--max-lora-rank") == "256"
    assert value("--max-model-len") == str(vllm_server.state.context_length)
    assert json.loads(value("--lora-modules")) == {"name": "a1", "path": str((root / "a1").resolve()),
                                                   "base_model_name": BASE}
    assert _log(standin[1], "start")[-1]["runtime_lora"] == "True"


def test_vllm_answers_only_tunesmith(vllm_server, standin, http_for):
    """vLLM gets a key of tunesmith's own, in its environment (not the user's VLLM_API_KEY, not
    argv): its port refuses everyone else, the management routes included."""
    started = _log(standin[1], "start")[-1]
    assert started["api_key"] not in (None, USERS_VLLM_KEY) and started["api_key"] not in started["argv"]
    engine_url = vllm_server.state.engine.url
    assert httpx.get(f"{engine_url}/health").status_code == 200
    for path, body in [("/v1/completions", {"model": "a1", "prompt": [1], "max_tokens": 1}),
                       ("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/tmp"})]:
        assert httpx.post(engine_url + path, json=body).status_code == 401
    assert _chat(http_for(vllm_server), "a1").status_code == 200


def test_vllm_requests_name_the_adapter_and_carry_the_prompt_ids(vllm_server, standin, http_for):
    http = http_for(vllm_server)
    adapter = _chat(http, "a1", temperature=0, seed=5, n=2).json()
    assert [c["message"]["content"] for c in adapter["choices"]] == ["<a1:0><a1:1><a1:2>"] * 2
    assert adapter["model"] == "a1" and adapter["usage"]["completion_tokens"] == 6
    sent = _log(standin[1], "completion")[-2:]
    assert {b["model"] for b in sent} == {"a1"} and sorted(b["seed"] for b in sent) == [5, 6]
    # vLLM stops by itself only on the base's EOS ids: the request names every id tunesmith's engine stops on
    assert sent[0]["stop_token_ids"] == sorted(vllm_server.state.base.stop_ids)
    # vLLM takes what a request leaves out from generation_config.json: everything but temperature/top_p is off
    assert {k: sent[0][k] for k in ("top_k", "min_p", "repetition_penalty", "presence_penalty",
                                    "frequency_penalty", "skip_special_tokens")} == {
        "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
        "skip_special_tokens": True}
    assert _chat(http, "a1", ignore_eos=True).status_code == 200  # no stop ids at all, as on tunesmith's engine
    assert "stop_token_ids" not in _log(standin[1], "completion")[-1]
    prompt = sent[0]["prompt"]
    assert all(isinstance(t, int) for t in prompt) and sent[0]["temperature"] == 0
    base = _chat(http, BASE).json()
    assert base["choices"][0]["message"]["content"] == f"<{BASE}:0><{BASE}:1><{BASE}:2>"
    assert _log(standin[1], "completion")[-1]["prompt"] == prompt  # same template, same ids


def test_vllm_streams_through_tunesmith(vllm_server, http_for):
    http = http_for(vllm_server)
    with http.stream("POST", "/v1/completions", json={"model": "a1", "prompt": "x", "max_tokens": 4,
                                                      "stream": True}) as response:
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "<a1:0><a1:1><a1:2><a1:3>"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_vllm_refusal_becomes_a_tunesmith_error_envelope(vllm_server, http_for):
    response = _chat(http_for(vllm_server), "a1", max_tokens=13)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "engine_refused"
    assert "unlucky" in response.json()["error"]["message"]


def test_vllm_silence_is_a_504_not_a_hang(vllm_server, http_for):
    response = _chat(http_for(vllm_server), "a1", max_tokens=14)
    assert response.status_code == 504 and response.json()["error"]["code"] == "engine_timeout"


def test_a_client_that_leaves_closes_its_engine_stream(vllm_server, http_for):
    """The engine stays silent after two pieces; the client reads them and leaves, and tunesmith
    drops its request to the engine instead of holding it until the timeout."""
    from serve_helpers import metric, wait_for

    http = http_for(vllm_server)
    cancelled = metric(http.get("/metrics").text, "tunesmith_cancelled_sequences_total")
    with http.stream("POST", "/v1/completions", json={"model": "a1", "prompt": "x", "max_tokens": 14,
                                                      "stream": True}) as response:
        lines = response.iter_lines()
        assert json.loads(next(lines)[6:])["choices"][0]["text"] == "<a1:0>"
        assert vllm_server.state.engine.running == 1
    wait_for(lambda: vllm_server.state.engine.running == 0, timeout=1.5, what="the engine request to close")
    # closed by the client leaving, not by the 2 s silence timeout
    assert metric(http.get("/metrics").text, "tunesmith_cancelled_sequences_total") == cancelled + 1


def test_vllm_hot_load_and_unload_go_to_vllm(vllm_server, standin, http_for, root):
    http = http_for(vllm_server)
    loaded = http.post("/v1/load_lora_adapter", json={"lora_name": "a2", "lora_path": "a2"})
    assert loaded.status_code == 200, loaded.text
    assert _log(standin[1], "load")[-1] == {"lora_name": "a2", "lora_path": str((root / "a2").resolve())}
    assert _chat(http, "a2").json()["choices"][0]["message"]["content"].startswith("<a2:0>")
    assert "a2" in [m["id"] for m in http.get("/v1/models").json()["data"]]
    assert http.post("/v1/unload_lora_adapter", json={"lora_name": "a2"}).status_code == 200
    assert _log(standin[1], "unload")[-1] == {"lora_name": "a2"}
    assert _chat(http, "a2").status_code == 404


def test_a_dead_engine_gives_503_at_once(root, standin, http_for):
    with pytest.MonkeyPatch.context() as mp, _server(root, standin, mp, "vllm") as server:
        http = http_for(server)
        assert http.get("/health").json()["engine"] == {"engine": "vllm", "alive": True}
        server.state.engine.process.kill()
        server.state.engine.process.wait()
        response = _chat(http, "a1")
        assert response.status_code == 503 and response.json()["error"]["code"] == "engine_unavailable"
        health = http.get("/health")
        assert health.status_code == 503 and health.json()["engine"]["alive"] is False


# --------------------------------------------------------------------------- llama.cpp


USERS_LLAMA_KEY = "a-key-for-another-llama-server"
# Left in the user's shell: llama-server would read each of them (common/arg.cpp, set_env).
USERS_LLAMA_ENV = {"LLAMA_API_KEY": USERS_LLAMA_KEY, "LLAMA_ARG_API_PREFIX": "/other", "LLAMA_ARG_CTX_SIZE": "64",
                   "LLAMA_ARG_EMBEDDINGS": "1", "LLAMA_ARG_NO_CONTEXT_SHIFT": "1", "LLAMA_ARG_N_GPU_LAYERS": "99"}


@pytest.fixture(scope="module")
def llama_server(root, standin, tmp_path_factory):
    gguf = tmp_path_factory.mktemp("gguf") / "model.gguf"
    gguf.write_bytes(b"GGUF")  # the stand-in does not read the model
    with pytest.MonkeyPatch.context() as mp:
        for name, value in USERS_LLAMA_ENV.items():
            mp.setenv(name, value)
        server = _server(root, standin, mp, "llama.cpp", gguf=gguf)
        with server:
            yield server, gguf


def test_llama_server_gets_converted_adapters_applied_per_request(llama_server, standin, http_for):
    server, gguf = llama_server
    argv = _log(standin[1], "start")[-1]["argv"]
    assert argv[argv.index("-m") + 1] == str(gguf) and argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--parallel") + 1] == "4" and "--lora-init-without-apply" in argv
    assert argv[argv.index("--lora") + 1].endswith("000-a1.gguf")
    http = http_for(server)
    assert _chat(http, "a1", seed=2**40 + 3).json()["choices"][0]["message"]["content"] == "<a1:0><a1:1><a1:2>"
    sent = _log(standin[1], "completion")[-1]
    assert sent["lora"] == [{"id": 0, "scale": 1.0}] and sent["top_k"] == 0 and sent["min_p"] == 0.0
    assert sent["seed"] == 3  # llama-server's seed is a 32-bit int
    assert _chat(http, BASE).json()["choices"][0]["message"]["content"] == "<base:0><base:1><base:2>"
    assert _log(standin[1], "completion")[-1]["lora"] == [{"id": 0, "scale": 0.0}]  # every adapter off


def test_llama_server_answers_only_tunesmith(llama_server, standin, http_for):
    """llama-server gets a key of tunesmith's own in LLAMA_API_KEY (not the user's, not argv), and
    none of the user's LLAMA_ARG_* variables that would change what tunesmith relies on; placement
    settings such as LLAMA_ARG_N_GPU_LAYERS pass through."""
    server, _ = llama_server
    started = _log(standin[1], "start")[-1]
    assert started["api_key"] not in (None, USERS_LLAMA_KEY) and started["api_key"] not in started["argv"]
    assert started["llama_env"] == ["LLAMA_API_KEY", "LLAMA_ARG_N_GPU_LAYERS"]
    engine_url = server.state.engine.url
    assert httpx.get(f"{engine_url}/health").status_code == 200
    refused = httpx.post(f"{engine_url}/v1/completions", json={"prompt": [1], "max_tokens": 1},
                         headers={"Authorization": f"Bearer {USERS_LLAMA_KEY}"})
    assert refused.status_code == 401
    assert _chat(http_for(server), "a1").status_code == 200


def test_a_runtime_load_swaps_llama_server_without_failing_requests_in_flight(llama_server, standin, http_for):
    import threading

    from serve_helpers import wait_for

    server, _ = llama_server
    engine = server.state.engine
    http = http_for(server)
    old_process, starts = engine.process, len(_log(standin[1], "start"))
    slow: dict = {}
    in_flight = threading.Thread(target=lambda: slow.update(response=_chat(http_for(server), "a1", max_tokens=15)))
    in_flight.start()
    wait_for(lambda: engine.running == 1, timeout=10, what="the slow request")

    loaded = http.post("/v1/load_lora_adapter", json={"lora_name": "a2", "lora_path": "a2"})
    assert loaded.status_code == 200, loaded.text
    argv = _log(standin[1], "start")[-1]["argv"]  # a second llama-server holds both adapters
    assert len(_log(standin[1], "start")) == starts + 1
    assert [argv[i + 1].rsplit("/", 1)[1] for i, a in enumerate(argv) if a == "--lora"] == ["000-a1.gguf", "001-a2.gguf"]
    assert old_process.poll() is None  # still finishing the request it was given

    assert _chat(http, "a2").json()["choices"][0]["message"]["content"] == "<a2:0><a2:1><a2:2>"
    assert _chat(http, "a1").json()["choices"][0]["message"]["content"] == "<a1:0><a1:1><a1:2>"
    assert _chat(http, BASE).json()["choices"][0]["message"]["content"] == "<base:0><base:1><base:2>"
    assert _log(standin[1], "completion")[-1]["lora"] == [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 0.0}]

    in_flight.join(30)
    assert slow["response"].status_code == 200
    assert slow["response"].json()["choices"][0]["message"]["content"] == "".join(f"<a1:{i}>" for i in range(15))
    wait_for(lambda: old_process.poll() is not None, timeout=15, what="the old llama-server to stop")
    assert engine.process.poll() is None


def test_sequences_beyond_max_queue_get_429(root, standin, http_for):
    import threading

    from serve_helpers import wait_for

    with pytest.MonkeyPatch.context() as mp:
        with _server(root, standin, mp, "vllm", max_queue=1, request_timeout=1.0) as server:
            http = http_for(server)
            silent = threading.Thread(target=_chat, args=(http_for(server), "a1"), kwargs={"max_tokens": 14})
            silent.start()
            wait_for(lambda: server.state.engine.running == 1, timeout=10, what="the silent request")
            busy = _chat(http, "a1")
            assert busy.status_code == 429 and busy.json()["error"]["code"] == "queue_full"
            silent.join(10)
            assert _chat(http, "a1").status_code == 200  # the slot is free again after the timeout
