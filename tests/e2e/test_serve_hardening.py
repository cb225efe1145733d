"""`tunesmith serve` against hostile requests and files, over real HTTP: none of them gets a 500
or takes other requests down."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil

import httpx
import pytest
from serve_helpers import QUESTIONS, LiveServer, build_adapter

from tunesmith.serve.config import ServeConfig
from tuned_helpers import one_thread

KEY = "hardening-key-7f1"
BASE = "tunesmith-demo-4m"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """An adapter root with one good adapter and malformed copies of it."""
    root = tmp_path_factory.mktemp("hardening") / "adapters"
    good = build_adapter(root / "good", seed=4)
    broken_manifest = root / "broken-manifest"
    shutil.copytree(good, broken_manifest / "adapter")
    (broken_manifest / "manifest.json").write_text('{"stage": "train", "base_model": ')
    for name, change in [("rank-word", {"r": "sixteen"}), ("rank-list", {"r": [16]}),
                         ("targets-number", {"target_modules": 7}), ("alpha-word", {"lora_alpha": "x"})]:
        shutil.copytree(good, root / name)
        config = json.loads((good / "adapter_config.json").read_text())
        (root / name / "adapter_config.json").write_text(json.dumps({**config, **change}))
    shutil.copytree(good, root / "random-weights")
    (root / "random-weights" / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    shutil.copytree(good, root / "config-list")
    (root / "config-list" / "adapter_config.json").write_text("[1, 2]")
    shutil.copytree(good, root / "looping-template")
    _set_chat_template(root / "looping-template", LOOPING_TEMPLATE)
    return root


# Jinja's sandbox caps one range() at 100,000 items, not two nested ones: 10^10 iterations.
LOOPING_TEMPLATE = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


def _set_chat_template(adapter_dir, template: str) -> None:
    jinja = adapter_dir / "chat_template.jinja"
    if jinja.is_file():
        jinja.write_text(template)
        return
    config = json.loads((adapter_dir / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (adapter_dir / "tokenizer_config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def server(root, one_torch_thread):
    cfg = ServeConfig(adapters={"good": str(root / "good")}, adapter_root=root, api_key=KEY,
                      max_queue=64, log_level="critical")
    with LiveServer(cfg) as live:
        yield live


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as c:
        yield c


@pytest.mark.parametrize("name", ["broken-manifest", "rank-word", "rank-list", "targets-number", "alpha-word",
                                  "random-weights", "config-list"])
def test_malformed_adapter_directories_are_400(http, name):
    response = http.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": name})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"]
    assert "x" not in http.get("/health").json()["adapters"]


def test_an_adapter_whose_chat_template_loops_is_400_within_the_budget(http, monkeypatch):
    from tunesmith.serve import budget

    monkeypatch.setattr(budget, "TEMPLATE_SECONDS", 0.5)
    response = http.post("/v1/load_lora_adapter", json={"lora_name": "loops", "lora_path": "looping-template"})
    assert response.status_code == 400, response.text
    assert "chat template did not" in response.json()["error"]["message"]
    # The load thread is free again: the next load works.
    ok = http.post("/v1/load_lora_adapter", json={"lora_name": "again", "lora_path": "good"})
    assert ok.status_code == 200, ok.text
    assert http.post("/v1/unload_lora_adapter", json={"lora_name": "again"}).status_code == 200


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/generate"])
def test_json_nested_10000_deep_is_400(http, path):
    body = '{"model": "%s", "prompt": "hi", "messages": [], "x": %s}' % (BASE, "[" * 10_000 + "]" * 10_000)
    response = http.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


def test_models_list_shows_names_and_never_server_paths(server, http, root):
    models = http.get("/v1/models").json()["data"]
    assert [m["id"] for m in models] == [BASE, "good"]
    text = json.dumps(models)
    assert str(root) not in text and "/" not in "".join(str(m.get("root")) for m in models)


def test_vanishing_sampling_values_poison_no_neighbour(server, http):
    """35 concurrent requests, a third of them with temperature or top_p 1e-300: every one is 200."""
    bodies = []
    for i in range(35):
        body = {"model": "good" if i % 2 else BASE, "messages": [{"role": "user", "content": QUESTIONS[i % 6]}],
                "max_tokens": 4}
        if i % 3 == 0:
            body["temperature" if i % 2 else "top_p"] = 1e-300
        else:
            body["temperature"] = 0.7
        bodies.append(body)
    with server.paused_engine(), concurrent.futures.ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(http.post, "/v1/chat/completions", json=b) for b in bodies]
    statuses = [f.result().status_code for f in futures]
    assert statuses == [200] * 35
