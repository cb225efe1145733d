"""`tunesmith serve` refusals over real HTTP: every error code in OpenAI's envelope, the API key on
every route, and runtime adapter management confined to --adapter-root."""

from __future__ import annotations

import concurrent.futures

import httpx
import openai
import pytest

from tunesmith.serve.config import ServeConfig

from serve_helpers import QUESTIONS, LiveServer, wait_for

KEY = "test-key-51c9"
BASE = "tunesmith-demo-4m"
CHAT = {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
ANY = {**CHAT, "prompt": "hi"}  # a valid body for chat, text completions and /generate alike
ROUTES = [("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/chat/completions"),
          ("POST", "/v1/completions"), ("POST", "/generate"), ("POST", "/v1/load_lora_adapter"),
          ("POST", "/v1/unload_lora_adapter"), ("GET", "/nowhere")]


@pytest.fixture(scope="module")
def server(root, one_torch_thread):
    cfg = ServeConfig(adapters={"a1": str(root / "a1")}, adapter_root=root, api_key=KEY, max_body_bytes=8192,
                      max_n=4, max_tokens_limit=600, max_queue=8, log_level="critical")
    with LiveServer(cfg) as live:
        yield live


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
        yield c


def _error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


# --------------------------------------------------------------------------- 400 / 404 / 405 / 413


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/generate"])
@pytest.mark.parametrize("body", [b"{not json", b"[1, 2, 3]", b"42", b""])
def test_malformed_bodies_are_400_never_422(http, path, body):
    _error(http.post(path, content=body, headers={"Content-Type": "application/json"}), 400, "invalid_json")


@pytest.mark.parametrize("change, param", [
    ({"max_tokens": "4"}, "max_tokens"), ({"temperature": -1}, "temperature"), ({"messages": "hi"}, "messages"),
    ({"n": 5}, "n"), ({"max_tokens": 601}, "max_tokens"), ({"stream": 1}, "stream"), ({"seed": "x"}, "seed"),
])
def test_wrong_types_and_out_of_range_values_are_400(http, change, param):
    assert _error(http.post("/v1/chat/completions", json={**CHAT, **change}), 400)["param"] == param


def test_prompt_plus_max_tokens_over_the_context_is_400(http):
    error = _error(http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 600,
                                                           "messages": [{"role": "user", "content": "x " * 500}]}),
                   400, "context_length_exceeded")
    assert "1024" in error["message"]
    _error(http.post("/v1/completions", json={"model": BASE, "prompt": "word " * 1100}), 400,
           "context_length_exceeded")


def test_unknown_models_routes_and_methods(server, http):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert info.value.code == "model_not_found"
    _error(http.get("/v1/nothing-here"), 404, "not_found")
    _error(http.get("/v1/chat/completions"), 405, "method_not_allowed")


def test_bodies_over_the_cap_are_413(http):
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 9000}]}
    _error(http.post("/v1/chat/completions", json=big), 413, "request_too_large")
    # Without a Content-Length (chunked upload) the body is counted as it arrives.
    chunks = iter([b'{"model": "', b"x" * 9000, b'"}'])
    _error(http.post("/v1/chat/completions", content=chunks), 413, "request_too_large")


# --------------------------------------------------------------------------- 429 / 503


def test_a_full_queue_is_429(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    ask = lambda: client.chat.completions.create(model=BASE, n=4, **{k: CHAT[k] for k in ("messages", "max_tokens")})
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        with server.paused_engine():
            futures = [pool.submit(ask) for _ in range(2)]  # 2 x 4 sequences fill the queue of 8
            wait_for(lambda: server.state.engine.queued == 8, timeout=30, what="the queue to fill")
            with pytest.raises(openai.RateLimitError) as info:
                ask()
        assert all(len(f.result(timeout=60).choices) == 4 for f in futures)
    assert info.value.code == "queue_full"


def test_while_shutting_down_every_route_is_503(server, http):
    server.state.draining = True
    try:
        for method, path in [("GET", "/health"), *ROUTES]:
            _error(http.request(method, path, json=CHAT), 503, "server_shutting_down")
    finally:
        server.state.draining = False
    assert http.get("/health").status_code == 200


# --------------------------------------------------------------------------- auth


@pytest.mark.parametrize("method, path", ROUTES)
@pytest.mark.parametrize("header", [None, "Bearer wrong-key", f"Basic {KEY}", f"Bearer {KEY}x", "Bearer"])
def test_every_route_but_health_needs_the_key(server, method, path, header):
    headers = {"Authorization": header} if header else {}
    response = httpx.request(method, server.url + path, json=ANY, headers=headers)
    assert _error(response, 401, "invalid_api_key")["type"] == "authentication_error"
    assert httpx.get(server.url + "/health", headers=headers).status_code == 200


def test_the_right_key_opens_every_route(http):
    for method, path in ROUTES[:5]:
        assert http.request(method, path, json=ANY).status_code == 200, path


# --------------------------------------------------------------------------- runtime adapters


def test_adapters_load_and_unload_at_runtime(server, http):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    assert http.post("/v1/load_lora_adapter", json={"lora_name": "a3", "lora_path": "a3"}).status_code == 200
    assert "a3" in [m.id for m in client.models.list().data]
    answer = client.chat.completions.create(model="a3", messages=[{"role": "user", "content": QUESTIONS[0]}],
                                            max_tokens=6, temperature=0)
    assert answer.model == "a3" and answer.usage.completion_tokens > 0
    _error(http.post("/v1/load_lora_adapter", json={"lora_name": "a3", "lora_path": "a3"}), 400, "adapter_exists")
    assert http.post("/v1/unload_lora_adapter", json={"lora_name": "a3"}).status_code == 200
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="a3", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    _error(http.post("/v1/unload_lora_adapter", json={"lora_name": "a3"}), 404, "model_not_found")
    assert http.get("/health").json()["adapters"] == ["a1"]


@pytest.mark.parametrize("body, fragment", [
    ({"lora_name": "x", "lora_path": "../adapters/a3"}, "'..'"),
    ({"lora_name": "x", "lora_path": "a3/../../outside"}, "'..'"),
    ({"lora_name": "x", "lora_path": "/etc"}, "outside the adapter root"),
    ({"lora_name": "x", "lora_path": "escape"}, "symlink"),
    ({"lora_name": "x", "lora_path": "pickled"}, "pickle"),
    ({"lora_name": "x", "lora_path": "missing"}, "does not exist"),
    ({"lora_name": "bad name!", "lora_path": "a3"}, "invalid adapter name"),
    ({"lora_name": BASE, "lora_path": "a3"}, "already loaded"),
    ({"lora_name": "x"}, "lora_path"),
])
def test_runtime_loading_refuses_unsafe_or_invalid_adapters(http, body, fragment):
    assert fragment in _error(http.post("/v1/load_lora_adapter", json=body), 400)["message"]
    assert "x" not in http.get("/health").json()["adapters"]


def test_without_a_key_the_api_is_open_and_adapter_management_is_off(root):
    with LiveServer(ServeConfig(adapter_root=root, log_level="critical")) as live:
        assert httpx.post(live.url + "/v1/chat/completions", json=CHAT).status_code == 200
        for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
            response = httpx.post(live.url + path, json={"lora_name": "a3", "lora_path": "a3"})
            assert _error(response, 403, "adapter_management_disabled")["type"] == "permission_error"
        assert httpx.get(live.url + "/health").json()["adapters"] == []
