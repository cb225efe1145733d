"""Registry aliases on a running server: clients hammer `tickets` while a canary starts, the
candidate is promoted and rolled back through the registry (the CLI's path), with no restart and
no failed request; a stream started on one version finishes on it; canary picks stick to a user;
a version that cannot load is replaced by the alias's fallback; metrics count per version."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from serve_helpers import LiveServer, metric, wait_for

from tunesmith.registry.aliases import Aliases
from tunesmith.registry.store import Registry
from tunesmith.serve.config import ServeConfig


def _chat(client, url, model="tickets", user=None, max_tokens=2):
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": "How do I sort a list?"}]}
    if user is not None:
        body["user"] = user
    return client.post(f"{url}/v1/chat/completions", json=body, timeout=120)


@pytest.fixture()
def registry(tmp_path, adapter_dirs):
    aliases = Aliases(Registry(tmp_path / "registry.sqlite3"))
    for path in (adapter_dirs["a1"], adapter_dirs["a2"], str(tmp_path / "missing")):
        aliases.registry.add("tickets", source="run:x", run_dir=path, weights_path=path)
    aliases.promote("tickets@1", actor="test")
    yield aliases
    aliases.registry.close()


def _applied(server, **split):
    """Wait until the server routes production with this split (the poller saw the change)."""
    want = {int(k.lstrip("v")): v for k, v in split.items()}
    wait_for(lambda: (live := server.state.aliases._table.get(("tickets", "production"))) is not None
             and live.route.split == want, timeout=60, what=f"the server to route {want}")


def test_canary_promote_rollback_reach_a_hammered_server_without_a_failed_request(registry):
    cfg = ServeConfig(registry=registry.registry.db.path, registry_poll_interval=0.05)
    with LiveServer(cfg) as server:
        failures, seen, stop = [], [], threading.Event()

        def client():
            with httpx.Client() as http:
                while not stop.is_set():
                    response = _chat(http, server.url)
                    if response.status_code != 200:
                        failures.append((response.status_code, response.text))
                    else:
                        seen.append(response.json()["model"])

        workers = [threading.Thread(target=client) for _ in range(3)]
        for worker in workers:
            worker.start()
        try:
            wait_for(lambda: len(seen) >= 3, timeout=120, what="first answers")
            registry.canary("tickets@2", 50, actor="test")
            _applied(server, v1=50, v2=50)
            mark = len(seen)
            wait_for(lambda: "tickets@2" in seen[mark:], timeout=120, what="canary traffic")
            registry.promote("tickets@2", actor="test")
            _applied(server, v2=100)
            registry.rollback("tickets", actor="test")
            _applied(server, v1=100)
            mark = len(seen)
            wait_for(lambda: len(seen) >= mark + 6, timeout=120, what="answers after the rollback")
        finally:
            stop.set()
            for worker in workers:
                worker.join(120)
        assert failures == []
        assert set(seen) == {"tickets@1", "tickets@2"}
        # Requests that started after the rollback was applied all answer from version 1.
        after = [_chat(httpx, server.url).json()["model"] for _ in range(3)]
        assert after == ["tickets@1"] * 3
        text = httpx.get(f"{server.url}/metrics").text
        assert metric(text, "tunesmith_alias_requests_total", model="tickets", alias="production", version="2") > 0
        assert metric(text, "tunesmith_requests_total", model="tickets@1", status="200") > 0
        assert metric(text, "tunesmith_alias_weight", model="tickets", alias="production", version="1") == 100
    actions = [(h["action"], h["to_version"]) for h in registry.history("tickets")]
    assert actions == [("promote", 1), ("canary", 1), ("promote", 2), ("rollback", 1)]


def test_a_stream_finishes_on_the_version_it_started_on(registry):
    registry.set("tickets", "canary", 2, actor="test")  # version 2 loads at startup
    cfg = ServeConfig(registry=registry.registry.db.path, registry_poll_interval=0.05)
    with LiveServer(cfg) as server:
        body = {"model": "tickets", "max_tokens": 40, "ignore_eos": True, "stream": True,
                "messages": [{"role": "user", "content": "What is a generator?"}]}
        models = []
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as response:
            lines = response.iter_lines()
            for line in lines:
                if line.startswith("data: {"):
                    models.append(json.loads(line[6:])["model"])
                    break
            with server.paused_engine():  # the switch lands while the stream is mid-way
                registry.promote("tickets@2", actor="test")
                _applied(server, v2=100)
            rest = [line for line in lines if line.startswith("data: ")]
        models += [json.loads(line[6:])["model"] for line in rest if line != "data: [DONE]"]
        assert rest[-1] == "data: [DONE]" and len(models) > 20 and set(models) == {"tickets@1"}
        assert _chat(httpx, server.url).json()["model"] == "tickets@2"
        listed = [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]]
        assert {"tickets", "tickets:canary", "tickets@1", "tickets@2"} <= set(listed)
        assert not [name for name in listed if name.startswith("reg-")]  # engine names stay inside


def test_canary_is_sticky_per_user_and_fallback_serves_when_the_primary_cannot_load(registry):
    registry.canary("tickets@2", 50, actor="test")
    cfg = ServeConfig(registry=registry.registry.db.path, registry_poll_interval=0.05)
    with LiveServer(cfg) as server, httpx.Client() as http:
        for user in ("ana", "bo", "cy", "di"):
            picks = {_chat(http, server.url, user=user, max_tokens=1).json()["model"] for _ in range(3)}
            assert len(picks) == 1
        registry.set("tickets", "production", 3, fallback=1, actor="test")  # version 3's files are missing
        wait_for(lambda: server.state.aliases._seen is not None
                 and server.state.aliases._seen[1][0].version == 3, timeout=60, what="the route to version 3")
        response = _chat(http, server.url)
        assert response.status_code == 200 and response.json()["model"] == "tickets@1"
        text = http.get(f"{server.url}/metrics").text
        assert metric(text, "tunesmith_version_load_failures_total", model="tickets", version="3") == 1
        pinned = _chat(http, server.url, model="tickets@2")
        assert pinned.status_code == 200 and pinned.json()["model"] == "tickets@2"
        assert _chat(http, server.url, model="tickets@3").status_code == 404
