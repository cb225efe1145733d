"""The models page's routes on a live `tunesmith serve` with a registry: versions and aliases,
promote through the gate (a refusal carries the gate table and moves nothing), canary, rollback,
the history, and who may use them (the server's own key only; changes off without a key)."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient
from jobs_helpers import jobs_settings, wait_until
from serve_helpers import LiveServer, write_run_dir

from tunesmith.registry.aliases import Aliases
from tunesmith.registry.lineage import version_fields
from tunesmith.registry.store import Registry
from tunesmith.serve.app import build_app
from tunesmith.serve.config import ServeConfig
from tunesmith.ui.config import WORKSPACE_ENV

KEY, PROJECT_KEY = "registry-key", "project-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
GATE_SCORES = {1: {"exact_match": 0.9, "chrf": 60.0}, 2: {"exact_match": 0.5, "chrf": 61.0}}


@pytest.fixture(scope="module")
def registry_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui-registry")
    path = root / "registry.sqlite3"
    registry = Registry(path)
    for seed in (1, 2):
        fields = version_fields(write_run_dir(root / f"run-{seed}", seed))
        registry.add("tickets", source=f"run:{fields['run_dir']}", **fields)
    Aliases(registry).promote("tickets@1", actor="ana")
    registry.close()
    (root / "gate.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}, '
                                     '{"role": "assistant", "content": "hello"}]}\n')
    return path


@pytest.fixture(scope="module")
def server(registry_path):
    jobs = jobs_settings(registry_path.parent / "jobs", projects={"acme": {"api_keys": [PROJECT_KEY]}})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(WORKSPACE_ENV, str(registry_path.parent))
        with LiveServer(ServeConfig(api_key=KEY, registry=registry_path, jobs=jobs, log_level="warning")) as live:
            yield live


def fake_gate_eval(monkeypatch):
    """The gate's evaluations, fixed per version (the decision is what is tested here)."""
    def evaluate(version, data, regression, out):
        return {"tuned": dict(GATE_SCORES[version.version])}
    monkeypatch.setattr("tunesmith.registry.gate._eval_stage", evaluate)


def test_versions_with_lineage_and_aliases(server, registry_path):
    listing = httpx.get(f"{server.url}/ui/api/registry", headers=AUTH).json()
    assert listing["enabled"] and "gate.jsonl" in listing["gate_sets"]
    (model,) = listing["models"]
    assert [v["ref"] for v in model["versions"]] == ["tickets@1", "tickets@2"]
    assert model["versions"][0]["manifest_chain"][0]["stage"] == "train"
    assert model["aliases"] == [{"alias": "production", "version": 1, "split": {"1": 100}, "canary": False,
                                 "fallback": None, "updated_at": model["aliases"][0]["updated_at"]}]


def test_only_the_servers_own_key_may_use_the_registry(server):
    assert httpx.get(f"{server.url}/ui/api/registry").status_code == 401
    project = {"Authorization": f"Bearer {PROJECT_KEY}"}
    assert httpx.get(f"{server.url}/ui/api/registry", headers=project).status_code == 403
    assert httpx.post(f"{server.url}/ui/api/registry/rollback", json={"name": "tickets"}, headers=project).status_code == 403


def test_a_refused_promotion_shows_the_gate_and_moves_nothing_then_canary_force_and_rollback(server, monkeypatch):
    fake_gate_eval(monkeypatch)
    url = f"{server.url}/ui/api/registry"
    refused = httpx.post(f"{url}/promote", headers=AUTH, timeout=60,
                         json={"ref": "tickets@2", "gate": "gate.jsonl", "actor": "ann"})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "gate_refused"
    rows = {r["metric"]: r for r in refused.json()["gate"]["rows"]}
    assert rows["exact_match"]["verdict"] == "worse" and rows["chrf"]["verdict"] == "ok"
    assert (rows["exact_match"]["production"], rows["exact_match"]["candidate"]) == (0.9, 0.5)
    assert httpx.get(url, headers=AUTH).json()["models"][0]["aliases"][0]["version"] == 1

    canary = httpx.post(f"{url}/canary", headers=AUTH, json={"ref": "tickets@2", "percent": 25}).json()
    assert canary["route"]["split"] == {"1": 75, "2": 25} and canary["route"]["canary"]
    forced = httpx.post(f"{url}/promote", headers=AUTH, timeout=60,
                        json={"ref": "tickets@2", "gate": "gate.jsonl", "force": True, "actor": "ann", "reason": "hotfix"})
    assert forced.status_code == 200 and forced.json()["route"]["split"] == {"2": 100}
    back = httpx.post(f"{url}/rollback", headers=AUTH, json={"name": "tickets", "actor": "bo"}).json()
    assert back["route"]["split"] == {"1": 100}

    history = httpx.get(f"{url}/history", params={"name": "tickets"}, headers=AUTH).json()["history"]
    assert [(h["action"], h["actor"], h["to_version"]) for h in history] == [
        ("promote", "ana", 1), ("canary", "ui", 1), ("promote", "ui:ann", 2), ("rollback", "ui:bo", 1)]
    assert history[2]["gate"]["passed"] is False and history[2]["gate"]["overridden_by"] == "ui:ann"
    assert history[2]["reason"] == "hotfix"
    # The running server follows the alias (it rereads the table every registry_poll_interval):
    # `tickets` answers from version 1 again.
    def answered_by():
        return httpx.post(f"{server.url}/v1/chat/completions", headers=AUTH, timeout=60, json={
            "model": "tickets", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).json()["model"]
    wait_until(lambda: answered_by() == "tickets@1", timeout=30, what="the server to follow the rollback")


def test_bad_requests_are_refused_with_the_reason(server):
    url = f"{server.url}/ui/api/registry"
    assert httpx.post(f"{url}/promote", headers=AUTH, json={"ref": "tickets@9"}).status_code == 400
    assert httpx.post(f"{url}/promote", headers=AUTH, json={"ref": "tickets@2", "gate": "../x.jsonl"}).status_code == 403
    assert httpx.post(f"{url}/canary", headers=AUTH, json={"ref": "tickets@2", "percent": 100}).status_code == 400
    assert httpx.post(f"{url}/promote", headers=AUTH, json={"ref": "tickets@2", "alias": "9"}).status_code == 400


def test_the_jobs_registry_not_written_yet_is_shown_empty_and_not_created(tmp_path):
    path = tmp_path / "jobs" / "registry.sqlite3"  # where succeeded jobs will be recorded
    client = TestClient(build_app(ServeConfig(jobs=jobs_settings(tmp_path / "jobs"), api_key=KEY, log_level="warning")))
    assert client.get("/ui/api/registry", headers=AUTH).json()["models"] == []
    assert client.get("/ui/api/registry/history", params={"name": "x"}, headers=AUTH).json()["history"] == []
    assert not path.exists()


def test_changes_are_off_on_a_server_without_a_key(registry_path):
    app = build_app(ServeConfig(registry=registry_path, log_level="warning"))  # no lifespan: no engine needed
    client = TestClient(app)
    assert client.get("/ui/api/registry").json()["enabled"]
    refused = client.post("/ui/api/registry/rollback", json={"name": "tickets"})
    assert refused.status_code == 403 and "no API key" in refused.json()["error"]["message"]
