"""Atomic checkpoints: what one holds and how a run finds and restores it.

A checkpoint `checkpoints/step-NNNNNNN/` holds
- `trainer_state.json`: the `TrainState` (step, trained tokens, early-stopping state);
- the trainable weights and the optimiser state, written by the run's `Sharding`
  (`trainable.safetensors`, `optimizer.pt` or one `optimizer-rankN.pt` per process, and
  `sharding.json` naming the layout; see `tunesmith.train.distributed`);
- each process's random generator states (`rng-rankN.json`, `torch_rng-rankN.safetensors`);
- `complete.json`, written last: a directory without it is never resumed from.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunesmith.errors import TrainingError
from tunesmith.manifest import atomic_write_text
from tunesmith.train.environment import Dist
from tunesmith.train.state import TrainState

CHECKPOINT_PREFIX = "step-"
COMPLETE_MARKER = "complete.json"
ADAPTER_LAYOUT = "adapter-layout"


def save_adapter_layout(out: Path, model, tokenizer, dist: Dist, sharding, *, resumed: bool) -> None:
    """Write `OUT/adapter-layout/` at the start of a LoRA run: the adapter's config, tensor names
    and tokenizer, with which each checkpoint's `trainable.safetensors` can be served as an
    adapter while the run goes on (the jobs API does). A resumed run keeps the one it started
    with; a fresh run replaces any left by an earlier attempt. Every rank calls it (saving may gather)."""
    target = out / ADAPTER_LAYOUT
    if resumed and target.is_dir():
        return
    tmp = out / f".tmp-{ADAPTER_LAYOUT}"
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    sharding.save_pretrained(model, tmp)
    if dist.is_main:
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    dist.barrier()


def save_checkpoint(root: Path, step: int, model, optimizer, state: TrainState, dist: Dist, keep: int,
                    sharding) -> Path:
    """Write checkpoint `step` atomically: a temporary directory renamed into place once complete.

    A crash at any moment leaves either the previous checkpoints or a complete new one; a
    leftover temporary directory is never picked up by `latest_checkpoint`. Every rank calls
    this (sharded strategies gather full tensors collectively).
    """
    from safetensors.torch import save_file

    final = root / f"{CHECKPOINT_PREFIX}{step:07d}"
    tmp = root / f".tmp-{CHECKPOINT_PREFIX}{step:07d}"
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    save_file({"state": torch.get_rng_state()}, str(tmp / f"torch_rng-rank{dist.rank}.safetensors"))
    atomic_write_text(tmp / f"rng-rank{dist.rank}.json", json.dumps(_rng_state()))
    sharding.save_state(tmp, model, optimizer)
    if dist.is_main:
        atomic_write_text(tmp / "trainer_state.json", state.to_json())
    dist.barrier()
    if dist.is_main:
        _fsync_dir_files(tmp)
        atomic_write_text(tmp / COMPLETE_MARKER, json.dumps({"step": step}))
        os.replace(tmp, final)
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def load_checkpoint(path: Path, model, optimizer, dist: Dist, sharding) -> TrainState:
    """Restore weights, optimiser and RNG state; return the trainer state (step, data position...)."""
    from safetensors.torch import load_file

    if not (path / COMPLETE_MARKER).is_file():
        raise TrainingError(f"{path} is not a complete checkpoint", hint="pass a checkpoints/step-* directory")
    sharding.load_state(path, model, optimizer)
    rank_file = path / f"rng-rank{dist.rank}.json"
    if rank_file.is_file():
        torch_rng = load_file(str(path / f"torch_rng-rank{dist.rank}.safetensors"))["state"]
        _restore_rng(json.loads(rank_file.read_text()), torch_rng)
    return TrainState.from_json((path / "trainer_state.json").read_text())


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
            and (p / COMPLETE_MARKER).is_file()]
    return sorted(done, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def resume_point(resume, out: Path) -> Path | None:
    """The checkpoint to resume from: None for a fresh run (refused if `out` holds one),
    the latest complete checkpoint for `resume=True`, or the given directory."""
    checkpoints = out / "checkpoints"
    if resume is None or resume is False:
        if (out / "adapter").exists() or (out / "model").exists() or latest_checkpoint(checkpoints):
            raise TrainingError(
                f"{out} already holds a training run",
                hint="pass --resume to continue it, or choose another output_dir (--set output_dir=...)",
            )
        return None
    if resume is True:
        found = latest_checkpoint(checkpoints)
        if found is None:
            raise TrainingError(f"nothing to resume: no complete checkpoint in {checkpoints}",
                                hint="start without --resume")
        return found
    path = Path(resume)
    if not path.is_dir():
        raise TrainingError(f"checkpoint not found: {path}")
    return path


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py = random.getstate()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def _restore_rng(state: dict[str, Any], torch_state: torch.Tensor) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(torch_state)


def _fsync_dir_files(directory: Path) -> None:
    for f in directory.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
