"""A real workspace for the UI tests, built once per test process with tunesmith's own stages:
`data prepare` on demo tickets, `train` (LoRA, a few steps on the embedded model) from the
prepared directory, and `eval --compare-base` of that run. Nothing is written by hand except a
second, still-growing metrics.jsonl copied line by line from the real one (a run in progress)."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
TICKETS = REPO / "examples" / "data" / "tickets"
TRAIN_STEPS = 8


@functools.lru_cache(maxsize=1)
def built_workspace() -> Path:
    from tunesmith.data.config import DataPrepareConfig
    from tunesmith.eval.config import EvalConfig, GenerationSettings
    from tunesmith.train.config import TrainConfig
    from tunesmith.data import prepare
    from tunesmith.eval import run as eval_run
    from tunesmith.train import sft

    root = Path(tempfile.mkdtemp(prefix="tunesmith-ui-ws-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    rows = (TICKETS / "train.jsonl").read_text(encoding="utf-8").splitlines()[:120]
    (root / "raw").mkdir()
    (root / "raw" / "tickets.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    tests = (TICKETS / "test.jsonl").read_text(encoding="utf-8").splitlines()[:4]
    (root / "prompts.jsonl").write_text("\n".join(tests) + "\n", encoding="utf-8")
    prepare.run(DataPrepareConfig(inputs=[root / "raw" / "tickets.jsonl"], out=root / "data",
                                  split={"val": 0.1, "test": 0.0}))
    cfg = TrainConfig.model_validate({
        "model": "default", "data": str(root / "data"), "method": "lora", "output_dir": str(root / "runs" / "sft"),
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
        "train": {"max_steps": TRAIN_STEPS, "micro_batch_size": 8, "learning_rate": 5e-3, "max_seq_len": 256,
                  "log_every": 1, "eval_every": 4, "warmup_ratio": 0.1},
    })
    sft.run(cfg)
    eval_run.run(EvalConfig(model=str(root / "runs" / "sft"), data=root / "prompts.jsonl", out=root / "evals" / "sft",
                            compare_base=True, limit=4, perplexity=False,
                            generation=GenerationSettings(max_new_tokens=24)), say=lambda _text: None)
    return root


def metrics_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
