"""The jobs page's server side: the line-by-line file check, and a standalone UI forwarding the
OpenAI routes (uploads and streamed chats pass through as they arrive) and the registry routes."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.testclient import TestClient

from tunesmith.jobs.validation import FileProblem, check_examples, check_upload
from tunesmith.ui.app import build_ui_app
from tunesmith.ui.config import UiConfig
from tunesmith.ui.upstream import Upstream

KEY = "sekret"
AUTH = {"Authorization": f"Bearer {KEY}"}
GOOD = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
NO_ANSWER = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
DPO = json.dumps({"input": {"messages": [{"role": "user", "content": "hi"}]},
                  "preferred_output": [{"role": "assistant", "content": "hello"}],
                  "non_preferred_output": [{"role": "assistant", "content": "hello"}]})


def stand_in_server(seen: list) -> FastAPI:
    """Files, jobs, streamed chat and the registry routes, recording what reached it."""
    app = FastAPI()

    @app.middleware("http")
    async def key(request: Request, call_next):
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        return await call_next(request)

    @app.post("/v1/files")
    async def upload(request: Request):
        body = await request.body()
        seen.append(("upload", request.headers.get("content-length"), len(body)))
        return {"id": "file-1", "object": "file", "bytes": len(body)}

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    async def events(job_id: str, request: Request):
        seen.append(("events", job_id, dict(request.query_params)))
        return {"object": "list", "data": [], "has_more": False}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()

        async def pieces():
            for word in ("one ", "two ", "three"):
                yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': word}}]})}\n\n"
            yield "data: [DONE]\n\n"
        assert body["stream"] is True
        return StreamingResponse(pieces(), media_type="text/event-stream")

    @app.get("/ui/api/registry")
    async def registry():
        return {"enabled": True, "models": [{"name": "tickets", "versions": [], "aliases": []}]}

    @app.post("/ui/api/registry/rollback")
    async def rollback(request: Request):
        seen.append(("rollback", await request.json()))
        return JSONResponse({"error": {"message": "no earlier version"}}, status_code=400)

    return app


@pytest.fixture
def ui(tmp_path):
    seen: list = []
    app = build_ui_app(UiConfig(workspace=tmp_path, api_key=KEY, max_body_bytes=4096),
                       upstream=Upstream(app=stand_in_server(seen)))
    with TestClient(app) as client:
        yield client, seen


def check(client, text: str, method: str = "supervised", filename: str = "train.jsonl") -> dict:
    response = client.post("/ui/api/check-file", params={"method": method, "filename": filename},
                           content=text.encode("utf-8"), headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


def test_every_broken_line_is_reported_with_its_rule(ui):
    client, _ = ui
    text = "\n".join([GOOD, "{not json", GOOD, "[1, 2]", NO_ANSWER, "", GOOD]) + "\n"
    out = check(client, text)
    assert (out["lines"], out["examples"]) == (7, 3)
    assert [(p["line"], p["rule"], p["stage"]) for p in out["problems"]] == [
        (2, "invalid_json", "upload"), (4, "not_an_object", "upload"), (5, "no_assistant_turn", "job")]
    assert all(p["fix"] for p in out["problems"])
    assert check(client, DPO + "\n", method="dpo")["problems"][0]["rule"] == "identical_pair"
    assert check(client, GOOD, filename="train.csv")["problems"][0]["rule"] == "file_format"


@pytest.mark.parametrize("lines", [[GOOD, "{bad"], [GOOD, NO_ANSWER], [GOOD, '"text"'], [GOOD, GOOD]])
def test_the_first_problem_is_the_one_the_jobs_api_reports(ui, tmp_path, lines):
    client, _ = ui
    path = tmp_path / "f.jsonl"
    path.write_text("\n".join(lines) + "\n")
    problems = check(client, path.read_text())["problems"]
    try:
        check_upload(path, path.name)
        check_examples(path, "supervised")
        expected = None
    except FileProblem as problem:
        expected = (problem.line, problem.rule)
    first = (problems[0]["line"], problems[0]["rule"]) if problems else None
    assert first == expected


def test_the_check_is_capped_like_any_request(ui):
    client, _ = ui
    big = (GOOD + "\n") * 200
    response = client.post("/ui/api/check-file", params={"filename": "x.jsonl"}, content=big, headers=AUTH)
    assert response.status_code == 413
    assert client.post("/ui/api/check-file", params={"filename": "x.jsonl"}, content=GOOD).status_code == 401


def test_uploads_pass_through_with_the_key_and_past_the_uis_own_cap(ui):
    client, seen = ui
    data = (GOOD + "\n") * 100  # larger than the UI's 4096-byte cap: the server caps uploads
    response = client.post("/ui/api/openai/v1/files", files={"file": ("t.jsonl", data.encode())},
                           data={"purpose": "fine-tune"}, headers=AUTH)
    assert response.status_code == 200 and response.json()["id"] == "file-1"
    kind, declared, received = seen[-1]
    assert kind == "upload" and int(declared) == received > len(data)
    assert client.post("/ui/api/openai/v1/files", files={"file": ("t.jsonl", b"x")}).status_code == 401


def test_only_the_pages_routes_are_forwarded(ui):
    client, seen = ui
    ok = client.get("/ui/api/openai/v1/fine_tuning/jobs/ftjob-1/events", params={"limit": 5, "after": "e1"}, headers=AUTH)
    assert ok.status_code == 200 and seen[-1] == ("events", "ftjob-1", {"limit": "5", "after": "e1"})
    for path in ("load_lora_adapter", "fine_tuning/jobs/../../metrics", "health", "files/x/y/z"):
        assert client.post(f"/ui/api/openai/v1/{path}", headers=AUTH).status_code == 404, path


def test_a_streamed_chat_arrives_as_the_server_sends_it(ui):
    client, _ = ui
    body = {"model": "m", "messages": [{"role": "user", "content": "count"}], "stream": True}
    with client.stream("POST", "/ui/api/openai/v1/chat/completions", json=body, headers=AUTH) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    words = [json.loads(e[6:])["choices"][0]["delta"]["content"] for e in events[:-1]]
    assert "".join(words) == "one two three" and events[-1] == "data: [DONE]"


def test_registry_routes_are_answered_by_the_server(ui):
    client, seen = ui
    assert client.get("/ui/api/registry", headers=AUTH).json()["models"][0]["name"] == "tickets"
    refused = client.post("/ui/api/registry/rollback", json={"name": "tickets"}, headers=AUTH)
    assert refused.status_code == 400 and refused.json()["error"]["message"] == "no earlier version"
    assert seen[-1] == ("rollback", {"name": "tickets"})
