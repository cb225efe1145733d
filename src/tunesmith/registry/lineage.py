"""What a training run directory says about the model it made: the fields of a registry version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import yaml

from tunesmith.manifest import sha256_file
from tunesmith.registry.store import RegistryError

HYPERPARAMETER_KEYS = ("epochs", "max_steps", "micro_batch_size", "gradient_accumulation_steps", "learning_rate",
                       "lr_scheduler", "warmup_ratio", "weight_decay", "seed", "max_seq_len", "packing")


def weights_dir(run_dir: Path) -> Path:
    for name in ("adapter", "model"):
        if (run_dir / name).is_dir():
            return run_dir / name
    raise RegistryError(f"{run_dir} holds no trained model (no adapter/ or model/)",
                        hint="register a directory written by a finished `tunesmith train` run")


def _metrics(run_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    last: dict[str, Any] = {}
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line) if line.strip() else {}
            if "loss" in record:
                last["train_loss"] = record["loss"]
            if "val_loss" in record:
                last["valid_loss"] = record["val_loss"]
    return {**last, "steps": manifest.get("steps"), "trained_tokens": manifest.get("trained_tokens"),
            "best_val_loss": manifest.get("best_val_loss")}


def _file_hash(manifest: dict[str, Any], name: str) -> Optional[str]:
    for entry in manifest.get("inputs", {}).get("data", []):
        if Path(entry.get("path", "")).name == name:
            return entry.get("sha256")
    return None


def _chain(run_dir: Path) -> list[dict[str, Any]]:
    """The run's manifest, then the manifests of the stages it read (its prepared dataset)."""
    chain = []
    candidates = [run_dir / "manifest.json"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    data_dirs = {Path(e["path"]).parent for e in manifest.get("inputs", {}).get("data", []) if "path" in e}
    candidates += [d / "manifest.json" for d in sorted(data_dirs)]
    for path in candidates:
        if path.is_file():
            stage = json.loads(path.read_text()).get("stage")
            chain.append({"stage": stage, "path": str(path.resolve()), "sha256": sha256_file(path)})
    return chain


def version_fields(run_dir: str | Path) -> dict[str, Any]:
    """Keyword arguments for `Registry.add` read from a finished `tunesmith train` run."""
    run_dir = Path(run_dir).resolve()
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.is_file():
        raise RegistryError(f"{run_dir} has no manifest.json", hint="pass the output_dir of a finished training run")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("stage") != "train":
        raise RegistryError(f"{manifest_path} records a {manifest.get('stage')!r} stage, not a training run")
    weights = weights_dir(run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    train = (config or {}).get("train", {})
    base = manifest.get("base_model") or {}
    lineage = {}
    if manifest.get("init_from"):  # the version this one continued, and how much of its data it replayed
        lineage["init_from"] = manifest["init_from"].get("ref") or manifest["init_from"].get("run_dir")
    if manifest.get("data_replay"):
        replay = manifest["data_replay"]
        lineage["replay"] = {k: replay.get(k) for k in ("ref", "run_dir", "share", "replayed", "new")}
    return {
        "run_dir": str(run_dir),
        "weights_path": str(weights),
        "base_path": base.get("path"),
        "base_sha256": base.get("weights_sha256"),
        "training_file_sha256": _file_hash(manifest, "train.jsonl"),
        "validation_file_sha256": _file_hash(manifest, "val.jsonl"),
        "hyperparameters": {"method": manifest.get("method"), **{k: train[k] for k in HYPERPARAMETER_KEYS if k in train},
                            **lineage},
        "metrics": _metrics(run_dir, manifest),
        "manifest_chain": _chain(run_dir),
    }
