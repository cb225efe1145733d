"""`tunesmith quickstart`: the whole lifecycle on the demo task, offline, in a few minutes.

Each stage runs through the same `run(cfg)` function its own verb uses and writes its own
directory under `out`, so every step can be rerun by hand on those directories:

    demo-data/  the generated ticket-triage data (train, held-out test, dirty)
    data/       `tunesmith data prepare` on the training file
    train/      `tunesmith train` (LoRA): adapter/, metrics.jsonl, loss.png
    eval/       `tunesmith eval --compare-base` on the held-out test set
    dpo/, eval-dpo/  with `--dpo`: DPO after the SFT run, evaluated on the same tickets
                (quickstart_dpo.py; eval-dpo/three_way.json holds base vs SFT vs SFT + DPO)
    merged/     `tunesmith merge`
    export/     `tunesmith export gguf --ollama` (GGUF, Modelfile, parity check)
    serve.log   the server's log from the last step, which asks the tuned adapter a question
                through the `openai` SDK
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tunesmith.data.config import DataPrepareConfig, DemoDataConfig
from tunesmith.errors import ServeError, TunesmithError
from tunesmith.eval.config import EvalConfig
from tunesmith.export.config import ExportConfig, MergeConfig
from tunesmith.models.loading import resolve_model_path
from tunesmith.quickstart_config import QuickstartConfig
from tunesmith.train.config import TrainConfig

ADAPTER_NAME = "tickets"
SAMPLE_TICKET = ("Hi, I was charged twice for order #55120, both payments of $89.00 are on my card. "
                 "Please fix this today, thanks.")


def _is_default(model_path: str) -> bool:
    from tunesmith.models import default_model_path

    return Path(resolve_model_path(model_path)) == default_model_path()


@dataclass
class QuickstartResult:
    """Every stage's directory under `out`, the figures written to summary.json, and what to run next."""

    out: Path
    figures: dict[str, Any]
    text: str

    def summary(self) -> str:
        return self.text


def run(cfg: QuickstartConfig, *, say: Callable[[str], None] = print) -> QuickstartResult:
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        if not cfg.overwrite:
            raise TunesmithError(f"{out} already holds files",
                                 hint="pass --overwrite to replace them, or --out another directory")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    tiny = _is_default(cfg.model.path)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    total = 5 + int(cfg.dpo) + int(cfg.serve)
    numbers = iter(range(1, total + 1))

    def stage(name: str, title: str):
        say(f"\n== {next(numbers)}/{total} {title} ==")
        timings[name] = time.perf_counter()

    def done(name: str) -> None:
        timings[name] = round(time.perf_counter() - timings[name], 1)

    # 1. data
    stage("data", "prepare the demo data (validate, redact personal data, deduplicate, split)")
    from tunesmith.data import demo, prepare

    demo.run(DemoDataConfig(out=out / "demo-data"))
    prepared = prepare.run(DataPrepareConfig(
        inputs=[out / "demo-data" / "train.jsonl"], out=out / "data", model=cfg.model, max_seq_len=cfg.max_seq_len,
        split={"train": 0.95, "val": 0.05, "test": 0.0}, seed=cfg.seed,
    ))
    counts = prepared.counts
    say(f"kept {counts['kept']} of {counts['read']} examples; train {counts['splits']['train']}, "
        f"val {counts['splits']['val']}; report: {out / 'data' / 'report.md'}")
    done("data")

    # 2. train
    stage("train", "fine-tune with LoRA")
    from tunesmith.train import sft

    steps = cfg.steps if cfg.steps is not None else (cfg.default_model_steps if tiny else None)
    learning_rate = cfg.learning_rate or (5e-3 if tiny else 2e-4)
    train_cfg = TrainConfig.model_validate({
        "model": cfg.model.model_dump(), "data": str(out / "data"), "method": "lora",
        "output_dir": str(out / "train"),
        # No LoRA dropout: on the demo it trains 20% faster on CPU with at least as good results.
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        # Real models: 4 packed rows of 256 tokens per step (a 135M model: see README for the budget).
        "train": {"learning_rate": learning_rate, "micro_batch_size": 16 if tiny else 4,
                  "max_seq_len": cfg.max_seq_len, "log_every": 10, "seed": cfg.seed,
                  # A real model validates once, at the end: on 2 CPU cores a pass over the
                  # validation split costs about as much as the 20 training steps themselves.
                  **({"max_steps": steps, "eval_every": max(1, steps // 2) if tiny else steps} if steps else {})},
    })
    trained = sft.run(train_cfg)
    done("train")

    # 3. evaluate
    stage("eval", "evaluate base vs tuned on the held-out test set")
    from tunesmith.eval import run as evaluation

    generation = {"max_new_tokens": 96, "batch_size": 16}
    metrics = evaluation.run(EvalConfig(
        model=str(out / "train"), data=out / "demo-data" / "test.jsonl", out=out / "eval", compare_base=True,
        limit=cfg.eval_limit, json_fields=["category", "priority"], generation=generation,
    ), say=say).metrics
    done("eval")

    dpo = None
    if cfg.dpo:
        stage("dpo", "DPO after SFT on the demo preference pairs, then base vs SFT vs SFT + DPO")
        from tunesmith import quickstart_dpo

        dpo = quickstart_dpo.run_stage(cfg, out, tiny=tiny, sft_learning_rate=learning_rate, generation=generation,
                                       sft_metrics=metrics, say=say)
        done("dpo")

    # 4. merge and export
    stage("export", "merge, export GGUF + Ollama Modelfile, check parity")
    from tunesmith.export import merge, run as export

    merged = merge.run(MergeConfig(run=str(out / "train"), out=out / "merged"), say=say)
    say(merged.summary())
    exported = export.run(ExportConfig(source=str(out / "merged"), out=out / "export" / f"{ADAPTER_NAME}.gguf",
                                       quant=cfg.gguf_quant, ollama=True, name=ADAPTER_NAME), say=say)
    done("export")

    # 5. serve
    answer = None
    if cfg.serve:
        stage("serve", "serve base + adapter and ask it through the openai SDK")
        answer = _serve_and_ask(out, resolve_model_path(cfg.model.path), say)
        done("serve")

    # 6. summary
    say(f"\n== {next(numbers)}/{total} summary ==")
    summary = {
        "out": str(out),
        "seconds": round(time.perf_counter() - started, 1),
        "stage_seconds": {k: v for k, v in timings.items()},
        "train": {"steps": trained.steps, "final_loss": trained.final_loss, "best_val_loss": trained.best_val_loss},
        "eval": {k: metrics.get(k) for k in ("examples", "base", "tuned", "delta", "win_rate", "generation_speed")},
        **({"dpo": dpo.as_dict()} if dpo is not None else {}),
        "merge": merged.parity,
        "export": exported.report,
        "answer": answer,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return QuickstartResult(out, summary, _summary_text(out, metrics, answer, cfg, summary["seconds"], dpo))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_and_ask(out: Path, base: str, say: Callable[[str], None]) -> str:
    """Start `tunesmith serve` on a free loopback port, ask the adapter one question, stop it."""
    import httpx
    from openai import OpenAI

    port = _free_port()
    cmd = [sys.executable, "-m", "tunesmith", "serve", "--model", base,
           "--adapter", f"{ADAPTER_NAME}={out / 'train'}", "--host", "127.0.0.1", "--port", str(port)]
    log = open(out / "serve.log", "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TUNESMITH_API_KEY": ""})
    try:
        deadline = time.time() + 120
        while True:
            if server.poll() is not None:
                raise ServeError(f"the server exited with status {server.returncode}",
                                 hint=f"see {out / 'serve.log'}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise ServeError("the server did not become healthy within 120 s", hint=f"see {out / 'serve.log'}")
            time.sleep(0.25)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
        say(f"server up on http://127.0.0.1:{port}; models: {[m.id for m in client.models.list().data]}")
        reply = client.chat.completions.create(
            model=ADAPTER_NAME, messages=[{"role": "user", "content": SAMPLE_TICKET}], max_tokens=96, temperature=0)
        answer = reply.choices[0].message.content
        say(f"user: {SAMPLE_TICKET}\n{ADAPTER_NAME}: {answer}")
        return answer
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _summary_text(out: Path, metrics: dict[str, Any], answer: str | None, cfg: QuickstartConfig, seconds: float,
                  dpo=None) -> str:
    from tunesmith.eval.compare import side_by_side
    from tunesmith.eval.report import markdown_table

    lines = [f"finished in {seconds:.0f} s; everything is under {out}/", ""]
    table = markdown_table(side_by_side(metrics.get("base", {}), metrics["tuned"]))
    lines += [f"base vs tuned on {metrics['examples']} held-out tickets:", table, ""]
    speed = metrics.get("generation_speed", {})
    if speed:
        lines += ["generation: " + "; ".join(f"{name} {v['examples_per_s']:.2f} examples/s"
                                             for name, v in speed.items()), ""]
    if dpo is not None:
        from tunesmith.quickstart_dpo import markdown

        lines += [f"DPO after SFT ({dpo.steps} steps on {dpo.pairs} pairs), the same {metrics['examples']} tickets:",
                  markdown(dpo.table), ""]
    gguf = next(iter(sorted((out / "export").glob("*.gguf"))), None)
    lines += [
        "artifacts:",
        f"  prepared data    {out / 'data'}  (report.md)",
        f"  training run     {out / 'train'}  (adapter/, metrics.jsonl, loss.png)",
        *([f"  DPO run          {out / 'dpo'}  (adapter/, reward_margin.png); evaluation {out / 'eval-dpo'}"]
          if dpo is not None else []),
        f"  evaluation       {out / 'eval'}  (report.md, report.html, samples.jsonl)",
        f"  merged model     {out / 'merged'}",
        f"  GGUF + Modelfile {out / 'export'}",
        "",
        "next steps:",
        f"  serve it:   tunesmith serve --model {resolve_model_path(cfg.model.path)} --adapter {ADAPTER_NAME}={out / 'train'}",
        f"  chat:       curl -s localhost:8000/v1/chat/completions -H 'content-type: application/json' "
        f"-d '{{\"model\": \"{ADAPTER_NAME}\", \"messages\": [{{\"role\": \"user\", \"content\": \"my order never arrived\"}}]}}'",
    ]
    if gguf is not None:
        lines += [f"  llama.cpp:  llama-cli -m {gguf} -cnv",
                  f"  Ollama:     ollama create {ADAPTER_NAME} -f {out / 'export' / 'Modelfile'} && ollama run {ADAPTER_NAME}"]
    return "\n".join(lines)
