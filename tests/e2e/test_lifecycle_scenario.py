"""The lifecycle loop on the embedded model, with clients hammering `tickets` throughout:
v1 trained (`tunesmith train`), registered and promoted -> traffic with feedback and corrections
(streamed answers among them) -> `data from-logs` -> v2 trained by `tunesmith train` with
`init_from: tickets@1` on the new data plus a replay of v1's training data (`data.replay`) -> the
gate passes -> canary 10% -> promote -> rollback. No request fails, every alias change is in the
history, and no personal data reaches the request log or the registry unredacted.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import httpx
import pytest
import yaml
from serve_helpers import LiveServer, wait_for
from tuned_helpers import one_thread, ticket_examples, write_jsonl

from tunesmith.cli import main as tunesmith
from tunesmith.registry.aliases import Aliases
from tunesmith.registry.feedback import RequestLogConfig
from tunesmith.registry.from_logs import FromLogsConfig
from tunesmith.registry.from_logs import run as from_logs
from tunesmith.registry.gate import GateThresholds, run_gate
from tunesmith.registry.store import Registry
from tunesmith.serve.config import ServeConfig

EMAIL = "maria.lopez@example.org"


def _small_eval(version, data, regression, out):
    from tunesmith.eval.config import EvalConfig, GenerationSettings
    from tunesmith.eval.run import run

    return run(EvalConfig(model=version.run_dir, data=data, out=out, regression=regression,
                          generation=GenerationSettings(max_new_tokens=24)), say=lambda _: None).metrics


def _tunesmith(*argv: str) -> None:
    """`tunesmith ARGV...` in this process, as a shell would run it."""
    with pytest.raises(SystemExit) as exit_info:
        tunesmith(list(argv))
    assert (exit_info.value.code or 0) == 0, argv


def _train(tmp_path: Path, name: str, data: dict, steps: int, learning_rate: float, batch: int, **extra) -> Path:
    config = {"model": "default", "data": data, "output_dir": str(tmp_path / name),
              "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
              "train": {"max_steps": steps, "learning_rate": learning_rate, "micro_batch_size": batch,
                        "max_seq_len": 256, "lr_scheduler": "constant", "warmup_ratio": 0.0, "packing": False},
              **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    with one_thread():
        _tunesmith("train", str(path))
    return tmp_path / name


def _stored(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return json.dumps([list(row) for t in tables for row in conn.execute(f"SELECT * FROM {t}")])
    finally:
        conn.close()


def _ask(http: httpx.Client, body: dict, stream: bool) -> dict:
    """A chat answer as {"id", "model"}, streamed or not."""
    if not stream:
        return http.post("/v1/chat/completions", json=body).json()
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        chunks = [json.loads(line[6:]) for line in response.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    return {"id": chunks[0]["id"], "model": chunks[0]["model"]}


def test_the_lifecycle_loop_with_clients_hammering_the_alias(tmp_path):
    registry_path = tmp_path / "registry.sqlite3"
    gate_set = write_jsonl(tmp_path / "gate.jsonl", ticket_examples(4))
    (tmp_path / "v1-data").mkdir()
    v1_train = write_jsonl(tmp_path / "v1-data" / "train.jsonl", ticket_examples(4))
    v1_run = _train(tmp_path, "v1-run", {"path": str(tmp_path / "v1-data")}, steps=20, learning_rate=1e-2, batch=4)
    _tunesmith("models", "add", str(v1_run), "--name", "tickets", "--registry", str(registry_path))
    aliases = Aliases(Registry(registry_path))
    aliases.promote("tickets@1", actor="release-bot")

    log_path = tmp_path / "request-log.sqlite3"
    cfg = ServeConfig(registry=aliases.registry.db.path, registry_poll_interval=0.05,
                      request_log=RequestLogConfig(path=log_path, models={"tickets": 1.0}))
    with LiveServer(cfg) as server:
        failures, answered, stop = [], [], threading.Event()

        def client(n: int) -> None:
            with httpx.Client(base_url=server.url, timeout=120) as http:
                while not stop.is_set():
                    response = http.post("/v1/chat/completions", json={
                        "model": "tickets", "max_tokens": 2, "temperature": 0, "user": f"client-{n}",
                        "messages": [{"role": "user", "content": f"Order broken, mail me at {EMAIL}"}]})
                    (answered if response.status_code == 200 else failures).append(
                        response.json()["model"] if response.status_code == 200 else response.text)

        def applied(split):
            wait_for(lambda: (live := server.state.aliases._table.get(("tickets", "production"))) is not None
                     and live.route.split == split, timeout=60, what=f"the server to route {split}")

        workers = [threading.Thread(target=client, args=(n,)) for n in range(2)]
        for worker in workers:
            worker.start()
        try:
            # Traffic with feedback: two answers approved, two corrected; two of them streamed.
            with httpx.Client(base_url=server.url, timeout=120) as http:
                for i, conversation in enumerate(ticket_examples(8)[4:]):
                    answer = _ask(http, {"model": "tickets", "max_tokens": 8, "temperature": 0,
                                         "messages": conversation[:-1]}, stream=i % 2 == 1)
                    rating = {"rating": "up"} if i < 2 else {
                        "rating": "down", "correction": conversation[-1]["content"],
                        "comment": f"customer {EMAIL} complained"}
                    wait_for(lambda rid=answer["id"]: any(r["id"] == rid for r in
                                                          server.app.state.request_log.exchanges("tickets")),
                             timeout=30, what="the exchange to be logged")
                    assert http.post("/v1/feedback", json={"response_id": answer["id"], **rating}).status_code == 200

            data = from_logs(FromLogsConfig(log=log_path, model="tickets", since="1h", out=tmp_path / "v2-data"))
            assert data.counts["corrected"] == 2 and data.counts["approved"] == 2
            # v2 continues v1 on the new data, half of its training set replayed from v1's.
            v2_run = _train(tmp_path, "v2-run", {"path": str(tmp_path / "v2-data"), "replay": {"share": 0.5}},
                            steps=4, learning_rate=2e-4, batch=2, init_from="tickets@1", registry=str(registry_path))
            manifest = json.loads((v2_run / "manifest.json").read_text())
            assert manifest["init_from"]["ref"] == "tickets@1"
            new = len((tmp_path / "v2-data" / "train.jsonl").read_text().splitlines())
            assert (manifest["data_replay"]["new"], manifest["data_replay"]["replayed"]) == (new, min(new, 4))
            mixed = (v2_run / "replay" / "train.jsonl").read_text().splitlines()
            assert len(mixed) == new + min(new, 4)
            assert sum(line in v1_train.read_text().splitlines() for line in mixed) == min(new, 4)
            _tunesmith("models", "add", str(v2_run), "--name", "tickets", "--registry", str(registry_path))

            with one_thread():
                gate = run_gate(aliases.registry, aliases.registry.get("tickets@2"), aliases.route("tickets"),
                                gate_set, evaluate=_small_eval, thresholds=GateThresholds(max_drop=0.05))
            assert gate["passed"], gate["table"]

            aliases.canary("tickets@2", 10, actor="release-bot", gate={k: v for k, v in gate.items() if k != "table"})
            applied({1: 90, 2: 10})
            aliases.promote("tickets@2", actor="release-bot")
            applied({2: 100})
            mark = len(answered)
            wait_for(lambda: "tickets@2" in answered[mark:], timeout=120, what="answers from v2")
            aliases.rollback("tickets", actor="on-call")
            applied({1: 100})
            mark = len(answered)
            wait_for(lambda: len(answered) >= mark + 4, timeout=120, what="answers after the rollback")
        finally:
            stop.set()
            for worker in workers:
                worker.join(120)
        assert failures == [] and len(answered) > 10
        assert answered[-1] == "tickets@1"

    history = [(h["action"], h["actor"], h["from_version"], h["to_version"]) for h in aliases.history("tickets")]
    assert history == [("promote", "release-bot", None, 1), ("canary", "release-bot", 1, 1),
                       ("promote", "release-bot", 1, 2), ("rollback", "on-call", 2, 1)]
    assert aliases.history("tickets")[1]["gate"]["passed"] is True
    for store in (log_path, aliases.registry.db.path):
        assert EMAIL not in _stored(store) and "client-" not in _stored(store)
    assert "<EMAIL>" in _stored(log_path)
