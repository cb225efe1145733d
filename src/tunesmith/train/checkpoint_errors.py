"""Checkpoint failures as errors a person can act on, instead of torch's tracebacks.

- Saving: a full disk surfaces from torch as an iostream error ("unexpected pos 704 vs 598",
  "file write failed"), from Python as ENOSPC. Either way the checkpoint being written is a
  temporary directory that is removed again (it is never taken for a checkpoint, and the space
  is needed), and the error says which path is full and that the last complete checkpoint is
  intact, since checkpoints are renamed into place only once complete.
- Loading: optimiser files are read with `weights_only=True`; a file holding other pickled
  objects is refused by torch with advice to pass `weights_only=False`, which would run whatever
  code the file carries. The error says the file is refused, and why.
"""

from __future__ import annotations

import contextlib
import errno
import pickle
import shutil
from pathlib import Path
from typing import Iterator

from tunesmith.errors import TrainingError

CHECKPOINT_PREFIX = "step-"
COMPLETE_MARKER = "complete.json"
# What torch's stream writer and safetensors say when a write comes up short.
_SHORT_WRITE = ("unexpected pos", "file write failed", "No space left", "StorageFull", "Disk quota exceeded")
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
        return True
    return any(marker in str(exc) for marker in _SHORT_WRITE)


def _last_complete(root: Path) -> Path | None:
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
            and (p / COMPLETE_MARKER).is_file()]
    return max(done, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]), default=None)


def _free(path: Path) -> str:
    try:
        return f"{shutil.disk_usage(path).free / 2**20:,.0f} MiB free"
    except OSError:
        return "free space unknown"


@contextlib.contextmanager
def saving(root: Path, step: int) -> Iterator[None]:
    """Around `save_checkpoint(root, step, ...)`: a full disk becomes a TrainingError."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - only disk-full errors are translated; the rest re-raise
        if not _is_disk_full(exc):
            raise
        partial = root / f".tmp-{CHECKPOINT_PREFIX}{step:07d}"
        shutil.rmtree(partial, ignore_errors=True)
        last = _last_complete(root)
        kept = f"the last complete checkpoint, {last}, is intact" if last else "no earlier checkpoint exists"
        raise TrainingError(
            f"the disk holding {root} is full ({_free(root)}): checkpoint step {step} could not be written; {kept}",
            hint="free some space (or lower train.keep_checkpoints), then continue with `--resume latest`",
        ) from None


def _optimizer_file(checkpoint: Path, rank: int) -> Path:
    per_rank = checkpoint / f"optimizer-rank{rank}.pt"
    return per_rank if per_rank.is_file() else checkpoint / "optimizer.pt"


@contextlib.contextmanager
def loading(checkpoint: Path, rank: int = 0) -> Iterator[None]:
    """Around `load_checkpoint(checkpoint, ...)`: a file holding arbitrary pickled objects is refused."""
    try:
        yield
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc) and "Weights only" not in str(exc):
            raise
        raise TrainingError(
            f"{_optimizer_file(checkpoint, rank)} is refused: it holds pickled objects other than tensors, "
            "which could run code when loaded, and tunesmith loads checkpoint files with weights_only=True",
            hint="this is not a file tunesmith wrote (or it was changed since); resume from another "
                 "checkpoint, or start the run again",
        ) from None
