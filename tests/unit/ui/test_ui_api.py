"""The UI's HTTP API (/ui/api) on the standalone app, with a stand-in OpenAI server in-process."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from tunesmith.data.formats import signature
from tunesmith.ui.app import build_ui_app
from tunesmith.ui.config import UiConfig
from tunesmith.ui.upstream import Upstream

KEY = "sekret"
AUTH = {"Authorization": f"Bearer {KEY}"}


def fake_openai_server() -> FastAPI:
    """Answers every chat request with `<model> says: <last user message>`; checks the key."""
    app = FastAPI()

    @app.middleware("http")
    async def key(request: Request, call_next):
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        return await call_next(request)

    @app.get("/v1/models")
    async def models():
        return {"data": [{"id": "base", "parent": None, "root": "/nowhere"}, {"id": "tuned", "parent": "base"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        text = f"{body['model']} says: {body['messages'][-1]['content']}"
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}

    return app


@pytest.fixture
def workspace(tmp_path):
    run = tmp_path / "runs" / "sft"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.5, "lr": 0.001}\n{"step": 2, "loss": 2.0, "lr": 0.0005}\n')
    (run / "config.yaml").write_text("method: lora\n")
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"question {i}"},
                                                       {"role": "assistant", "content": "ref"}]}) + "\n"
                               for i in range(3)))
    return tmp_path


@pytest.fixture
def client(workspace):
    app = build_ui_app(UiConfig(workspace=workspace, api_key=KEY), upstream=Upstream(app=fake_openai_server()))
    with TestClient(app) as c:
        yield c


def test_the_page_is_public_and_the_api_needs_the_key(client):
    page = client.get("/ui/")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/ui/assets/js/main.js").status_code == 200
    refused = client.get("/ui/api/runs")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert client.get("/ui/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/ui/api/runs", headers=AUTH).json()["runs"][0]["id"] == "runs/sft"


def test_traversal_and_weights_are_refused(client):
    for path in ("../etc/passwd", "/etc/passwd", "runs/../../x.json"):
        assert client.get("/ui/api/file", params={"path": path}, headers=AUTH).status_code == 403
    assert client.get("/ui/api/file", params={"path": "runs/sft/adapter/adapter_model.safetensors"},
                      headers=AUTH).status_code == 403
    assert client.get("/ui/api/run", params={"path": "runs/none"}, headers=AUTH).status_code == 404


def test_metrics_polling_returns_new_records_only(client, workspace):
    first = client.get("/ui/api/metrics", params={"path": "runs/sft"}, headers=AUTH).json()
    assert [r["loss"] for r in first["records"]] == [2.5, 2.0]
    with open(workspace / "runs" / "sft" / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 3, "loss": 1.5, "lr": 0.0001}\n')
    second = client.get("/ui/api/metrics", params={"path": "runs/sft", "offset": first["offset"]}, headers=AUTH).json()
    assert [r["step"] for r in second["records"]] == [3]


def test_oversized_bodies_are_refused(client):
    big = json.dumps({"model": "base", "messages": [{"role": "user", "content": "x" * 2_000_000}]})
    response = client.post("/ui/api/chat", content=big, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 413


def test_chat_goes_through_the_server_with_the_callers_key(client):
    body = {"model": "tuned", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    assert client.post("/ui/api/chat", json=body, headers=AUTH).json()["content"] == "tuned says: hi"
    bad = client.post("/ui/api/chat", json={**body, "messages": [{"role": "wizard", "content": "x"}]}, headers=AUTH)
    assert bad.status_code == 400


def test_render_is_asked_of_a_tunesmith_server_and_says_so_when_it_is_not_one(client):
    response = client.post("/ui/api/render", json={"model": "base", "messages": [{"role": "user", "content": "hi"}]},
                           headers=AUTH)
    assert response.status_code == 502 and "cannot render prompts" in response.json()["error"]["message"]


def test_review_round_trip_and_export(client):
    made = client.post("/ui/api/reviews", headers=AUTH, json={"model_1": "base", "model_2": "tuned",
                                                              "prompt_file": "prompts.jsonl", "temperature": 0}).json()
    assert made["items"] == 3
    rid = made["id"]
    for _ in range(3):
        item = client.get(f"/ui/api/reviews/{rid}/next", params={"reviewer": "ann"}, headers=AUTH).json()
        choice = "A" if item["a"].startswith("tuned") else "B"
        assert client.post(f"/ui/api/reviews/{rid}/votes", headers=AUTH,
                           json={"reviewer": "ann", "item": item["item"], "choice": choice}).status_code == 200
    assert client.get(f"/ui/api/reviews/{rid}/next", params={"reviewer": "ann"}, headers=AUTH).json()["done"]
    results = client.get(f"/ui/api/reviews/{rid}/results", headers=AUTH).json()
    assert results["overall"]["win_rate"] == 1.0 and results["overall"]["model_2"] == 3
    export = client.get(f"/ui/api/reviews/{rid}/export", headers=AUTH)
    rows = [json.loads(line) for line in export.text.splitlines()]
    assert len(rows) == 3 and all(signature(r) == "preference" for r in rows)
    assert {r["chosen"][0]["content"] for r in rows} == {f"tuned says: question {i}" for i in range(3)}
    assert client.post("/ui/api/reviews", headers=AUTH, json={"model_1": "base", "model_2": "tuned",
                                                               "prompt_file": "../x.jsonl"}).status_code == 403


def test_a_ui_without_a_server_says_how_to_give_it_one(workspace):
    with TestClient(build_ui_app(UiConfig(workspace=workspace))) as c:
        response = c.get("/ui/api/models")
    assert response.status_code == 503 and "--server" in response.json()["error"]["message"]
