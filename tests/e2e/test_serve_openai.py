"""`tunesmith serve` end to end: a real uvicorn server on 127.0.0.1 driven by the official
`openai` SDK (and httpx where the SDK hides the wire): every endpoint, streaming, adapters picked
by `model`, mixed-adapter batches, runtime adapter management, errors, auth and cancellation."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from tunesmith.serve.config import ServeConfig

from serve_helpers import QUESTIONS, LiveServer, metric, wait_for

KEY = "test-key-7f3a"
BASE = "tunesmith-demo-4m"
GREEDY = {"temperature": 0, "max_tokens": 12}


@pytest.fixture(scope="module")
def server(root, one_torch_thread):
    cfg = ServeConfig(adapters={"a1": str(root / "a1"), "a2": str(root / "a2")}, api_key=KEY,
                      default_max_tokens=12, log_level="warning")
    with LiveServer(cfg) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
        yield c


def _ask(client, model, question, **extra):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                          **{**GREEDY, **extra})


def _tokens(client, model, question, **extra):
    response = _ask(client, model, question, extra_body={"return_token_ids": True, "ignore_eos": True}, **extra)
    return response.choices[0].model_extra["token_ids"]


# --------------------------------------------------------------------------- endpoints


def test_models_lists_the_base_and_every_adapter(client):
    models = client.models.list().data
    assert [m.id for m in models] == [BASE, "a1", "a2"]
    assert models[1].model_extra["parent"] == BASE


def test_chat_completion_picks_the_adapter_named_by_model(client):
    response = _ask(client, "a1", QUESTIONS[0])
    choice = response.choices[0]
    assert response.model == "a1" and response.object == "chat.completion"
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    usage = response.usage
    assert 0 < usage.completion_tokens <= 12 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert _tokens(client, "a1", QUESTIONS[0]) != _tokens(client, BASE, QUESTIONS[0])


def test_streaming_gives_the_same_text_and_ends_with_done(client, http):
    whole = _ask(client, "a1", QUESTIONS[1]).choices[0].message.content
    chunks = list(_ask(client, "a1", QUESTIONS[1], stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    body = {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "stream": True, **GREEDY}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_text_completions_with_n_and_streaming(client):
    response = client.completions.create(model="a1", prompt="The json module", n=2, **GREEDY)
    assert [c.index for c in response.choices] == [0, 1]
    assert response.choices[0].text == response.choices[1].text  # greedy: both choices agree
    ids = client.completions.create(model="a1", prompt=[1, 265, 80, 318], max_tokens=4, temperature=0)
    assert ids.usage.prompt_tokens == 4
    streamed = client.completions.create(model="a1", prompt="The json module", stream=True, **GREEDY)
    assert "".join(c.choices[0].text for c in streamed) == response.choices[0].text


def test_generate_is_the_guides_minimal_endpoint(client, http):
    reply = http.post("/generate", json={"prompt": QUESTIONS[2], "model": "a1"})
    assert reply.status_code == 200
    assert reply.json()["response"] == _ask(client, "a1", QUESTIONS[2]).choices[0].message.content


def test_stop_strings_cut_the_answer(client):
    text = _ask(client, "a1", QUESTIONS[3], extra_body={"ignore_eos": True}).choices[0].message.content
    assert len(text) >= 4
    stop = text[len(text) // 2:len(text) // 2 + 2]
    cut = _ask(client, "a1", QUESTIONS[3], stop=[stop], extra_body={"ignore_eos": True}).choices[0]
    assert cut.finish_reason == "stop" and cut.message.content == text[:text.index(stop)]


def test_concurrent_requests_for_different_adapters_batch_and_match_one_by_one(server, client):
    jobs = [(model, q) for q, model in zip(QUESTIONS, [BASE, "a1", "a2", "a2", "a1", BASE])]
    before = metric(_metrics(server), "tunesmith_batch_size_bucket", le="4.0")
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        with server.paused_engine():  # let all six queue up, so they are admitted as one batch
            futures = [pool.submit(_tokens, client, model, q) for model, q in jobs]
            wait_for(lambda: server.state.engine.queued == len(jobs), timeout=30, what="the requests to queue")
        together = [f.result(timeout=60) for f in futures]
    assert metric(_metrics(server), "tunesmith_batch_size_bucket", le="4.0") == before  # no pass had < 5 rows
    assert together == [_tokens(client, model, q) for model, q in jobs]
    assert len({tuple(t) for t in together[:3]}) == 3  # base, a1 and a2 answer differently


def _metrics(server) -> str:
    return httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text


def test_the_python_sdk_example_runs_against_the_server(server):
    example = Path(__file__).resolve().parents[2] / "examples" / "clients" / "python_openai.py"
    result = subprocess.run([sys.executable, str(example), "--base-url", server.url + "/v1", "--adapter", "a1",
                             "--max-tokens", "8"], capture_output=True, text=True, timeout=120,
                            env={"TUNESMITH_API_KEY": KEY, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert f"models: {BASE}, a1, a2" in result.stdout
    assert "[a1] " in result.stdout and f"[{BASE}] " in result.stdout and "[a1, streamed] " in result.stdout
