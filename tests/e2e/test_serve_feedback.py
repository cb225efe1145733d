"""Production feedback on a running server: opted-in models are logged (sampled, redacted before
the INSERT), `POST /v1/feedback` stores ratings and corrections with their exchange, and
`data from-logs` turns approved and corrected exchanges into a prepared training set, without the
examples the previous training data already holds. Also: retention limits."""

from __future__ import annotations

import json
import random
import sqlite3
import time

import httpx
import pytest
from serve_helpers import LiveServer, wait_for

from tunesmith.errors import ConfigError
from tunesmith.registry.aliases import Aliases
from tunesmith.registry.feedback import FeedbackRequest, RequestLog, RequestLogConfig
from tunesmith.registry.from_logs import FromLogsConfig, parse_since, run
from tunesmith.registry.store import Registry
from tunesmith.serve.config import ServeConfig

EMAIL, PHONE = "jane.doe@example.com", "+1 415 555 0134"


def _stored_text(path) -> str:
    conn = sqlite3.connect(path)
    try:
        return json.dumps([list(r) for t in ("exchanges", "feedback") for r in conn.execute(f"SELECT * FROM {t}")])
    finally:
        conn.close()


def test_logged_exchanges_are_redacted_rated_and_become_a_training_set(tmp_path, adapter_dirs):
    aliases = Aliases(Registry(tmp_path / "registry.sqlite3"))
    aliases.registry.add("tickets", source="run:a1", run_dir=adapter_dirs["a1"], weights_path=adapter_dirs["a1"])
    aliases.promote("tickets@1", actor="test")
    log_path = tmp_path / "log.sqlite3"
    cfg = ServeConfig(registry=aliases.registry.db.path, registry_poll_interval=0.05,
                      request_log=RequestLogConfig(path=log_path, models={"tickets": 1.0}))
    ids = []
    with LiveServer(cfg) as server, httpx.Client(base_url=server.url, timeout=120) as http:
        for i in range(4):
            body = {"model": "tickets", "max_tokens": 3, "temperature": 0, "user": f"customer-{i}",
                    "messages": [{"role": "user", "content": f"Ticket {i}: call me at {PHONE} or {EMAIL}"}]}
            answer = http.post("/v1/chat/completions", json=body).json()
            assert answer["id"].startswith("chatcmpl-") and answer["model"] == "tickets@1"
            ids.append(answer["id"])
        http.post("/v1/chat/completions", json={"model": "default", "max_tokens": 2,
                                                "messages": [{"role": "user", "content": "not opted in"}]})
        request_log = server.app.state.request_log
        wait_for(lambda: len(request_log.exchanges()) == 4, timeout=30, what="four logged exchanges")
        ratings = [{"rating": "up"}, {"rating": "down", "correction": f"Reply to {EMAIL}: refund sent."},
                   {"rating": "down", "comment": f"rude; I am {EMAIL}"}]
        for response_id, rating in zip(ids, ratings):
            stored = http.post("/v1/feedback", json={"response_id": response_id, **rating})
            assert stored.status_code == 200, stored.text
        unknown = http.post("/v1/feedback", json={"response_id": "chatcmpl-nope", "rating": "up"})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "response_not_found"
        assert http.post("/v1/feedback", json={"response_id": ids[0], "rating": "meh"}).status_code == 400
    text = _stored_text(log_path)
    assert EMAIL not in text and "415 555" not in text and "customer-" not in text
    assert "<EMAIL>" in text and "<PHONE>" in text
    rows = RequestLog(RequestLogConfig(path=log_path)).exchanges("tickets")
    assert [r["served"] for r in rows] == ["tickets@1"] * 4

    previous = tmp_path / "old-train.jsonl"  # already trained on the approved exchange
    approved = rows[0]
    previous.write_text(json.dumps({"messages": [*approved["messages"],
                                                 {"role": "assistant", "content": approved["answer"]}]}) + "\n")
    result = run(FromLogsConfig(log=log_path, model="tickets", since="1d", out=tmp_path / "v2-data",
                                previous=[previous]))
    assert result.counts == {"exchanges": 4, "approved": 0, "corrected": 1, "previous": 1}
    written = [json.loads(line) for split in ("train", "val", "test")
               for line in (tmp_path / "v2-data" / f"{split}.jsonl").read_text().splitlines()]
    assert [ex["messages"][-1]["content"] for ex in written] == ["Reply to <EMAIL>: refund sent."]
    with pytest.raises(ConfigError):  # nothing new since a minute from now
        run(FromLogsConfig(log=log_path, model="tickets", since="2099-01-01", out=tmp_path / "none"))


def test_sampling_and_retention(tmp_path):
    request_log = RequestLog(RequestLogConfig(path=tmp_path / "l.sqlite3", models={"tickets": 0.25},
                                              retention_days=1, max_exchanges=3), rng=random.Random(1))
    share = sum(request_log.wants("tickets") for _ in range(4000)) / 4000
    assert 0.22 < share < 0.28 and not request_log.wants("other")
    for i in range(5):
        request_log.record(f"id{i}", "tickets", "tickets@1", [{"role": "user", "content": "hi"}], "yo", "stop")
    request_log.add_feedback(FeedbackRequest(response_id="id4", rating="up"))
    assert request_log.prune() == 2 and [r["id"] for r in request_log.exchanges()] == ["id2", "id3", "id4"]
    assert request_log.prune(now=time.time() + 2 * 86400) == 3
    assert request_log.exchanges() == [] and request_log.db.query("SELECT * FROM feedback") == []


def test_since_reads_durations_and_dates():
    assert parse_since("2d", now=1_000_000) == 1_000_000 - 172800
    assert parse_since("2026-01-01") == 1767225600
    with pytest.raises(ConfigError):
        parse_since("last week")
