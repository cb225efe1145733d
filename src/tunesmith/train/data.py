"""Training data: a directory written by `tunesmith data prepare`, or raw files prepared on the
way with the same code (into `output_dir/data`, so the run keeps a record of what it trained on)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.train.config import TrainConfig
from tunesmith.errors import DataError


@dataclass
class TrainingData:
    train_rows: list[dict[str, Any]]
    val_rows: list[dict[str, Any]]
    directory: Path
    files: list[Path]
    manifest: Path | None
    prepared_here: bool = False
    replay: dict[str, Any] | None = None  # data.replay's counts, for the log and the manifest

    def describe(self) -> str:
        text = f"{len(self.train_rows)} training and {len(self.val_rows)} validation examples from {self.directory}"
        if self.replay is not None:
            r = self.replay
            text += (f"; replay: {r['new']} new examples and {r['replayed']} from {r['ref'] or r['run_dir']} "
                     f"({100 * r['share']:.1f}% replayed, {r['requested_share']:g} asked"
                     + (f"; only {r['available']} there" if r["replayed"] < r["wanted"] else "") + ")")
        if self.prepared_here and self.manifest is not None:
            counts = json.loads(self.manifest.read_text())["counts"]
            rejected = sum(counts.get("rejected", {}).values())
            text += (f" (prepared from {counts['read']} raw examples: {rejected} rejected, "
                     f"{counts.get('examples_with_pii', 0)} with personal data redacted; "
                     f"see {self.directory / 'report.md'})")
        return text


def is_prepared_dir(path: Path) -> bool:
    return path.is_dir() and (path / "train.jsonl").is_file()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"invalid JSON: {exc.msg}", where=f"{path}:{number}",
                                hint="prepared files are written by `tunesmith data prepare`; re-run it") from None
    return rows


def load_training_data(cfg: TrainConfig, out: Path, dist) -> TrainingData:
    paths = [Path(p) for p in cfg.data.path]
    if len(paths) == 1 and is_prepared_dir(paths[0]):
        directory = paths[0]
    else:
        for p in paths:
            if not p.exists():
                raise DataError(f"training data not found: {p}",
                                hint="set data.path to a prepared directory or to data files")
            if p.is_dir():
                raise DataError(f"{p} is a directory without train.jsonl",
                                hint="pass a directory written by `tunesmith data prepare`, or the data files themselves")
        directory = out / "data"
        if dist.is_main:
            _prepare(cfg, paths, directory)
        dist.barrier()
    train = read_jsonl(directory / "train.jsonl")
    val_path = directory / "val.jsonl"
    val = read_jsonl(val_path) if val_path.is_file() else []
    files = [f for f in (directory / "train.jsonl", val_path) if f.is_file()]
    replay = None
    if cfg.data.replay is not None:  # the mixed set is the run's training file, so a later replay includes it
        from tunesmith.registry.replay import replay_for_training

        train, mixed_file, replay = replay_for_training(cfg, train, out, write=dist.is_main)
        dist.barrier()
        files = [mixed_file, *files[1:]]
    manifest = directory / "manifest.json"
    return TrainingData(train, val, directory, files, manifest if manifest.is_file() else None,
                        prepared_here=directory == out / "data", replay=replay)


def _prepare(cfg: TrainConfig, paths: list[Path], directory: Path) -> None:
    """Run the data stage on raw files: validation, cleaning, dedup and a train/val split."""
    from tunesmith.data.config import DataPrepareConfig
    from tunesmith.data import prepare

    prep = DataPrepareConfig(
        inputs=paths,
        out=directory,
        model=cfg.model,
        max_seq_len=cfg.train.max_seq_len,
        split={"train": 1.0 - cfg.data.val_ratio, "val": cfg.data.val_ratio, "test": 0.0},
        seed=cfg.train.seed,
    )
    prepare.run(prep)
