"""The lifecycle loop on the embedded model, with clients hammering `tickets` throughout:
v1 trained and promoted -> traffic with feedback and corrections -> `data from-logs` -> v2
continued from v1's adapter on the new data plus a replay of v1's training data -> the gate
passes -> canary 10% -> promote -> rollback. No request fails, every alias change is in the
history, and no personal data reaches the request log or the registry unredacted.

v2's training here continues v1's adapter with the test helpers' few-step loop: `train.init_from`
(which resolves `NAME@VERSION` with `tunesmith.registry.aliases.version_for_init`) belongs to the
training stage.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import httpx
import torch
from serve_helpers import LiveServer, wait_for
from tuned_helpers import _save_run, _train, lora_run, one_thread, ticket_examples, write_jsonl

from tunesmith.registry.aliases import Aliases, version_for_init
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


def _continue_training(init_run: str, conversations, out: Path) -> Path:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = Path(init_run) / "adapter"
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    base = AutoModelForCausalLM.from_pretrained(json.loads((Path(init_run) / "manifest.json").read_text())
                                                ["base_model"]["path"])
    model = PeftModel.from_pretrained(base, adapter, is_trainable=True)
    torch.manual_seed(0)
    _train(model, tokenizer, conversations, steps=4, lr=2e-3)
    return _save_run(out, model, tokenizer, "lora")


def _stored(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return json.dumps([list(row) for t in tables for row in conn.execute(f"SELECT * FROM {t}")])
    finally:
        conn.close()


def test_the_lifecycle_loop_with_clients_hammering_the_alias(tmp_path):
    aliases = Aliases(Registry(tmp_path / "registry.sqlite3"))
    gate_set = write_jsonl(tmp_path / "gate.jsonl", ticket_examples(4))
    v1_run = lora_run()
    aliases.registry.add("tickets", source=f"run:{v1_run}", run_dir=v1_run, weights_path=v1_run / "adapter")
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
            # Traffic with feedback: two answers approved, two corrected.
            with httpx.Client(base_url=server.url, timeout=120) as http:
                for i, conversation in enumerate(ticket_examples(8)[4:]):
                    answer = http.post("/v1/chat/completions", json={
                        "model": "tickets", "max_tokens": 8, "temperature": 0,
                        "messages": conversation[:-1]}).json()
                    rating = {"rating": "up"} if i < 2 else {
                        "rating": "down", "correction": conversation[-1]["content"],
                        "comment": f"customer {EMAIL} complained"}
                    wait_for(lambda rid=answer["id"]: any(r["id"] == rid for r in
                                                          server.app.state.request_log.exchanges("tickets")),
                             timeout=30, what="the exchange to be logged")
                    assert http.post("/v1/feedback", json={"response_id": answer["id"], **rating}).status_code == 200

            data = from_logs(FromLogsConfig(log=log_path, model="tickets", since="1h", out=tmp_path / "v2-data"))
            assert data.counts["corrected"] == 2 and data.counts["approved"] == 2
            new = [json.loads(line)["messages"] for split in ("train", "val", "test")
                   for line in (tmp_path / "v2-data" / f"{split}.jsonl").read_text().splitlines()]
            replay = ticket_examples(4)  # v1's training data, replayed against forgetting
            with one_thread():
                v2_run = _continue_training(version_for_init(aliases.registry, "tickets@production"),
                                            new + replay, tmp_path / "v2-run")
            aliases.registry.add("tickets", source=f"run:{v2_run}", run_dir=v2_run, weights_path=v2_run / "adapter")

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
