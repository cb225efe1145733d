"""Replay: a share of a previous version's training data mixed into the new training set.

Retraining only on fresh production data makes a model forget what it knew; mixing back part of
the data the previous version learned from guards against it. The previous training file is the
one its run's manifest records, and it must still have the hash recorded for it (by the registry
for that version, and by the run's manifest) — an edited or replaced file is refused rather than
silently replayed.

`tunesmith train` mixes with `data.replay: {source: tickets@1, share: 0.3}`: the mixed set is
written to `output_dir/replay/train.jsonl` and recorded as the run's training file, so the next
version's replay of this one includes what this one replayed.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Optional

from tunesmith.manifest import sha256_file
from tunesmith.registry.store import ModelVersion, RegistryError

REPLAY_DIR = "replay"


def _recorded_training_file(run_dir: Path, expected_sha256: Optional[str], label: str) -> tuple[Path, str]:
    manifest = run_dir / "manifest.json"
    entries = json.loads(manifest.read_text()).get("inputs", {}).get("data", []) if manifest.is_file() else []
    found = [e for e in entries if Path(e.get("path", "")).name == "train.jsonl"]
    if not found or not Path(found[0]["path"]).is_file():
        raise RegistryError(f"{label}: its run records no training file that still exists",
                            hint="replay needs the train.jsonl the run read (see its manifest.json)")
    path = Path(found[0]["path"])
    digest = sha256_file(path)
    for expected in (expected_sha256, found[0].get("sha256")):
        if expected and digest != expected:
            raise RegistryError(f"{label}: {path} changed since the version was trained on it",
                                hint="restore the file, or mix in the old data yourself")
    return path, digest


def training_file(version: ModelVersion) -> Path:
    """The train.jsonl the version was trained on, checked against its recorded hashes."""
    return _recorded_training_file(Path(version.run_dir), version.training_file_sha256, version.ref)[0]


def replay_count(new: int, share: float) -> int:
    """How many old examples make up `share` of a set with `new` new examples."""
    return round(new * share / (1 - share))


def mix_rows(new: list, old: list, *, share: float, seed: int) -> tuple[list, dict[str, Any]]:
    """Every new example plus old ones drawn without replacement (seeded) to make up `share` of the
    result, shuffled together. With too few old examples, all of them are replayed and the counts
    say so."""
    if not 0 <= share < 1:
        raise RegistryError(f"replay share {share} must be at least 0 and below 1")
    wanted = replay_count(len(new), share) if share else 0
    rng = random.Random(seed)
    replayed = rng.sample(old, min(wanted, len(old)))
    mixed = list(new) + replayed
    rng.shuffle(mixed)
    return mixed, {"new": len(new), "replayed": len(replayed), "wanted": wanted, "available": len(old),
                   "share": len(replayed) / len(mixed) if mixed else 0.0}


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def mix_with_replay(new_train: Path, previous: ModelVersion, out: Path, *, share: float, seed: int = 0) -> dict:
    """Write `out`: every new example plus previous examples making up `share` of the result."""
    mixed, counts = mix_rows(_lines(new_train), _lines(training_file(previous)), share=share, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(line + "\n" for line in mixed), encoding="utf-8")
    return {"new": counts["new"], "replayed": counts["replayed"], "from": previous.ref, "share": counts["share"]}


def replay_for_training(cfg, train_rows: list[dict[str, Any]], out: Path, write: bool
                        ) -> tuple[list[dict[str, Any]], Path, dict[str, Any]]:
    """`data.replay` of a training config: (the mixed rows, the file recording them, the counts for
    the manifest). The mix depends only on the data and `train.seed`, so a resumed run trains on
    exactly the same set."""
    from tunesmith.registry.sources import resolve_run
    from tunesmith.train.data import read_jsonl

    settings = cfg.data.replay
    given = settings.source or cfg.init_from
    if given is None:
        raise RegistryError("data.replay has no source: set data.replay.source (NAME@VERSION or a run directory) "
                            "or init_from", hint="example: data: {path: data/v2, replay: {source: tickets@1, share: 0.3}}")
    source = resolve_run(str(given), cfg.registry, field="data.replay.source")
    expected = source.version.training_file_sha256 if source.version is not None else None
    old_path, digest = _recorded_training_file(source.run_dir, expected, source.label)
    old_rows = read_jsonl(old_path)
    mixed, counts = mix_rows(train_rows, old_rows, share=settings.share, seed=cfg.train.seed)
    target = Path(out) / REPLAY_DIR / "train.jsonl"
    if write:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in mixed), encoding="utf-8")
        os.replace(tmp, target)
    record = {"source": source.given, "ref": source.ref, "run_dir": str(source.run_dir), "file": str(old_path),
              "sha256": digest, "requested_share": settings.share, "seed": cfg.train.seed, **counts}
    return mixed, target, record
