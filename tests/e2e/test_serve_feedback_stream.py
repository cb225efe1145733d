"""Streamed answers are logged too: the answer assembled from the chunks, redacted, under the id
the chunks carry, so `POST /v1/feedback` on a streamed response works. Streams that fail part-way
or are cut off are not logged."""

from __future__ import annotations

import json

import httpx
from serve_helpers import LiveServer, wait_for

from tunesmith.registry.feedback import RequestLogConfig
from tunesmith.serve.config import ServeConfig
from tunesmith.serve.feedback import StreamedAnswer
from tunesmith.serve.protocol import chat_chunk, sse

EMAIL = "ana.silva@example.net"


def _stream(http: httpx.Client, body: dict) -> list[dict]:
    chunks = []
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[len("data: "):]))
    return chunks


def test_a_streamed_answer_is_logged_redacted_under_its_chunks_id_and_takes_feedback(tmp_path):
    log_path = tmp_path / "log.sqlite3"
    cfg = ServeConfig(request_log=RequestLogConfig(path=log_path, models={"default": 1.0}))
    body = {"model": "default", "max_tokens": 12, "temperature": 0, "user": "customer-7",
            "messages": [{"role": "user", "content": f"My parcel is late, write to {EMAIL}"}]}
    with LiveServer(cfg) as server, httpx.Client(base_url=server.url, timeout=120) as http:
        chunks = _stream(http, {**body, "stream_options": {"include_usage": True}})
        ids = {c["id"] for c in chunks}
        assert len(ids) == 1
        rid = ids.pop()
        streamed_text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1]
        plain = http.post("/v1/chat/completions", json=body).json()
        request_log = server.app.state.request_log
        wait_for(lambda: {rid, plain["id"]} <= {r["id"] for r in request_log.exchanges()}, timeout=30,
                 what="both exchanges to be logged")
        rows = {r["id"]: r for r in request_log.exchanges()}
        # The stream's assembled answer is what the same greedy request answers without streaming.
        assert rows[rid]["answer"] == streamed_text == plain["choices"][0]["message"]["content"]
        assert rows[rid]["finish_reason"] == finish == plain["choices"][0]["finish_reason"]
        assert rows[rid]["served"] == chunks[0]["model"] == plain["model"] and rows[rid]["user_hash"] not in (None, "customer-7")
        assert EMAIL not in json.dumps(rows[rid]["messages"]) and "<EMAIL>" in json.dumps(rows[rid]["messages"])
        stored = http.post("/v1/feedback", json={"response_id": rid, "rating": "down",
                                                 "correction": f"We will write to {EMAIL} today."})
        assert stored.status_code == 200, stored.text
        rated = {r["id"]: r for r in request_log.exchanges()}[rid]
        assert rated["rating"] == "down" and rated["correction"] == "We will write to <EMAIL> today."


def _events(*chunks: dict, done: bool = True) -> bytes:
    return b"".join(sse(c) for c in chunks) + (sse("[DONE]") if done else b"")


def test_the_assembler_takes_the_first_choice_and_refuses_broken_streams():
    good = _events(chat_chunk("chatcmpl-1", "tickets@2", 0, 0, {"role": "assistant", "content": ""}),
                   chat_chunk("chatcmpl-1", "tickets@2", 0, 1, {"content": "other choice"}),
                   chat_chunk("chatcmpl-1", "tickets@2", 0, 0, {"content": "Refund é"}),
                   chat_chunk("chatcmpl-1", "tickets@2", 0, 0, {"content": " sent"}),
                   chat_chunk("chatcmpl-1", "tickets@2", 0, 0, {}, "stop"))
    answer = StreamedAnswer(max_bytes=1000)
    for i in range(0, len(good), 7):  # events split across body messages, even inside a UTF-8 character
        answer.feed(good[i:i + 7])
    assert answer.complete and (answer.id, answer.model, answer.text, answer.finish_reason) == \
        ("chatcmpl-1", "tickets@2", "Refund é sent", "stop")

    cut = StreamedAnswer(1000)
    cut.feed(_events(chat_chunk("chatcmpl-2", "m", 0, 0, {"content": "Ref"}), done=False))
    failed = StreamedAnswer(1000)
    failed.feed(_events(chat_chunk("chatcmpl-3", "m", 0, 0, {"content": "Ref"}),
                        {"error": {"message": "engine failed", "type": "server_error"}}))
    too_long = StreamedAnswer(10)
    too_long.feed(_events(chat_chunk("chatcmpl-4", "m", 0, 0, {"content": "x" * 11}), chat_chunk(
        "chatcmpl-4", "m", 0, 0, {}, "length")))
    assert not cut.complete and not failed.complete and not too_long.complete
