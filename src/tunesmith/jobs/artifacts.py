"""What a finished job leaves behind: servable checkpoint adapters, the results CSV, model names."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any, Optional

CHECKPOINT_PREFIX = "step-"
# Written by `tunesmith train` at the start of a LoRA run (train.checkpoint.ADAPTER_LAYOUT): the
# adapter config and tokenizer that a checkpoint's weights are served with while the run goes on.
ADAPTER_LAYOUT = "adapter-layout"
RESULT_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")


def complete_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints of a training run, oldest first. The rule is train.checkpoint's
    (`step-NNNNNNN` with its completion marker), read here without importing the train stage."""
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
            and (p / "complete.json").is_file()]
    return sorted(done, key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)))


def model_name(base: str, organization: str, suffix: Optional[str], job_id: str) -> str:
    """`ft:{base}:{org}:{suffix}:{id}`, OpenAI's shape (the id is the job id's random part)."""
    return f"ft:{base}:{organization}:{suffix or ''}:{job_id.removeprefix('ftjob-')[:8]}"


def checkpoint_name(model: str, step: int) -> str:
    return f"{model}:ckpt-step-{step}"


def _peft_key(key: str) -> str:
    """A training checkpoint's parameter name as PEFT saves it (without the adapter name)."""
    return key.replace(".modules_to_save.default.", ".").replace(".default.", ".")


def export_checkpoint(checkpoint: Path, final_adapter: Path, out: Path) -> bool:
    """Write `out` as an adapter directory holding `checkpoint`'s weights, with the config and
    tokenizer of `final_adapter` (the run's adapter, or its adapter layout while it runs). False
    (nothing written) when the checkpoint's tensors are not exactly that adapter's set, so a
    checkpoint is never served with missing or extra weights."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    weights = load_file(str(checkpoint / "trainable.safetensors"))
    renamed = {_peft_key(k): v for k, v in weights.items()}
    with safe_open(str(final_adapter / "adapter_model.safetensors"), framework="pt") as fh:
        expected = set(fh.keys())
    if set(renamed) != expected:
        return False
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(final_adapter, tmp, ignore=shutil.ignore_patterns("adapter_model.safetensors", "README.md"))
    save_file({k: v.contiguous() for k, v in renamed.items()}, str(tmp / "adapter_model.safetensors"))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return True


def read_metrics(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Complete records of metrics.jsonl from byte `offset`, and the offset after the last one."""
    if not path.is_file():
        return [], offset
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read()
    end = data.rfind(b"\n") + 1  # a line still being written waits for the next read
    records = [json.loads(line) for line in data[:end].splitlines() if line.strip()]
    return records, offset + end


def results_csv(records: list[dict[str, Any]]) -> bytes:
    """OpenAI's step_metrics.csv: one row per logged step (validation figures on their step's row);
    `train_accuracy` is the step's mean token accuracy."""
    rows: dict[int, dict[str, Any]] = {}
    for record in records:
        row = rows.setdefault(int(record["step"]), {"step": int(record["step"])})
        if "loss" in record:
            row["train_loss"] = record["loss"]
            row["train_accuracy"] = record.get("mean_token_accuracy", "")
        if "val_loss" in record:
            row["valid_loss"] = record["val_loss"]
            row["valid_mean_token_accuracy"] = record.get("val_mean_token_accuracy", "")
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for step in sorted(rows):
        writer.writerow({key: rows[step].get(key, "") for key in RESULT_COLUMNS})
    return out.getvalue().encode("utf-8")
