"""Replay: a share of a previous version's training data mixed into the new training set.

Retraining only on fresh production data makes a model forget what it knew; mixing back part of
the data the previous version learned from guards against it. The previous training file is the
one its run's manifest records, and it must still have the hash the registry recorded for that
version — an edited or replaced file is refused rather than silently replayed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tunesmith.manifest import sha256_file
from tunesmith.registry.store import ModelVersion, RegistryError


def training_file(version: ModelVersion) -> Path:
    """The train.jsonl the version was trained on, checked against its recorded hash."""
    manifest = Path(version.run_dir) / "manifest.json"
    entries = json.loads(manifest.read_text()).get("inputs", {}).get("data", []) if manifest.is_file() else []
    paths = [Path(e["path"]) for e in entries if Path(e.get("path", "")).name == "train.jsonl"]
    if not paths or not paths[0].is_file():
        raise RegistryError(f"{version.ref}: its run records no training file that still exists",
                            hint="replay needs the train.jsonl the run read (see its manifest.json)")
    if version.training_file_sha256 and sha256_file(paths[0]) != version.training_file_sha256:
        raise RegistryError(f"{version.ref}: {paths[0]} changed since the version was trained on it",
                            hint="restore the file, or mix in the old data yourself")
    return paths[0]


def mix_with_replay(new_train: Path, previous: ModelVersion, out: Path, *, share: float, seed: int = 0) -> dict:
    """Write `out`: every new example plus previous examples making up `share` of the result."""
    if not 0 <= share < 1:
        raise RegistryError(f"replay share {share} must be at least 0 and below 1")
    new = [line for line in new_train.read_text(encoding="utf-8").splitlines() if line.strip()]
    old = [line for line in training_file(previous).read_text(encoding="utf-8").splitlines() if line.strip()]
    wanted = round(len(new) * share / (1 - share)) if share else 0
    rng = random.Random(seed)
    replayed = rng.sample(old, min(wanted, len(old)))
    mixed = new + replayed
    rng.shuffle(mixed)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(line + "\n" for line in mixed), encoding="utf-8")
    return {"new": len(new), "replayed": len(replayed), "from": previous.ref, "share": len(replayed) / len(mixed)}
