"""What the training recipes share: distributed setup, model construction, the optimiser and
learning-rate schedule, atomic checkpoints, and metric logging."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from tunesmith.train.config import LoraSettings, TrainConfig, TrainSettings
from tunesmith.errors import TrainingError
from tunesmith.train.distributed import Sharding, unwrap
from tunesmith.train.dropout import use_cheap_dropout
from tunesmith.manifest import atomic_write_text

CHECKPOINT_PREFIX = "step-"
COMPLETE_MARKER = "complete.json"


# --------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def all_sum(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return float(t.item())


def setup_distributed() -> Dist:
    """Join the process group that `torchrun` / `accelerate launch` set up through env vars."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = f"cuda:{local}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(local)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
    return Dist(rank=rank, world_size=world, local_rank=local, device=device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- model


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit packed weights count their real element number."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def apply_method(model, cfg: TrainConfig, extra_modules_to_save: Iterable[str] = (), tied_embeddings: bool = False,
                 device: str = "cpu"):
    """Wrap the base model for the configured method: LoRA / QLoRA adapters, or full fine-tuning."""
    settings: TrainSettings = cfg.train
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.method == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=settings.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif settings.gradient_checkpointing:
        model.enable_input_require_grads()
    lora: LoraSettings = cfg.lora
    modules_to_save = sorted(set(lora.modules_to_save) | set(extra_modules_to_save)) or None
    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        use_rslora=lora.use_rslora,
        use_dora=lora.use_dora,
        modules_to_save=modules_to_save,
        bias="none",
        task_type="CAUSAL_LM",
        # New token rows trained through modules_to_save must stay shared between the tied
        # input and output embeddings, or the saved adapter unties them.
        ensure_weight_tying=bool(tied_embeddings and modules_to_save),
    )
    try:
        model = get_peft_model(model, peft_config)
    except ValueError as exc:
        raise TrainingError(f"cannot attach LoRA adapters: {exc}",
                            hint="check lora.target_modules against the model's module names") from None
    if device.startswith("cpu"):  # on GPUs PEFT's fused dropout is already cheap
        use_cheap_dropout(model)
    return model


# --------------------------------------------------------------------------- optimiser


def build_optimizer(settings: TrainSettings, model) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in unwrap(model).named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": settings.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=settings.learning_rate, betas=(0.9, 0.999), eps=1e-8)
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise TrainingError(f"optimizer {settings.optimizer} needs bitsandbytes",
                            hint="pip install 'tunesmith[qlora]' or use optimizer: adamw") from None
    cls = bnb.optim.AdamW8bit if settings.optimizer == "adamw_8bit" else bnb.optim.PagedAdamW8bit
    return cls(groups, lr=settings.learning_rate)


def lr_at(step: int, total_steps: int, settings: TrainSettings) -> float:
    """Learning rate for optimiser step `step` (0-based): linear warm-up, then the schedule."""
    warmup = int(math.ceil(settings.warmup_ratio * total_steps))
    peak = settings.learning_rate
    if step < warmup:
        return peak * (step + 1) / warmup
    if settings.lr_scheduler == "constant":
        return peak
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if settings.lr_scheduler == "linear":
        return peak * (1.0 - progress)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def _restore_rng(state: dict[str, Any], torch_state: torch.Tensor) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(torch_state)


def save_checkpoint(root: Path, step: int, model, optimizer, state: dict[str, Any], dist: Dist, keep: int,
                    sharding=None) -> Path:
    """Write checkpoint `step` atomically: a temporary directory renamed into place once complete.

    A crash at any moment leaves either the previous checkpoints or a complete new one; a
    leftover temporary directory is never picked up by `latest_checkpoint`. With a sharded
    strategy (`tunesmith.train.distributed`) the weights and optimiser state are gathered to
    full tensors first, so the files look like a single-process run's.
    """
    from safetensors.torch import save_file

    sharding = sharding or Sharding(None, dist)
    final = root / f"{CHECKPOINT_PREFIX}{step:07d}"
    tmp = root / f".tmp-{CHECKPOINT_PREFIX}{step:07d}"
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    rank = dist.rank
    save_file({"state": torch.get_rng_state()}, str(tmp / f"torch_rng-rank{rank}.safetensors"))
    atomic_write_text(tmp / f"rng-rank{rank}.json", json.dumps(_rng_state()))
    if sharding.collective_state or dist.is_main:
        weights = sharding.trainable_state(model)
        optim = sharding.optimizer_state(model, optimizer)
    if sharding.per_rank_optimizer:
        torch.save(optim, tmp / f"optimizer-rank{rank}.pt")
    if dist.is_main:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / "trainable.safetensors"))
        if not sharding.per_rank_optimizer:
            torch.save(optim, tmp / "optimizer.pt")
        atomic_write_text(tmp / "trainer_state.json", json.dumps(state, indent=2))
        atomic_write_text(tmp / "sharding.json", json.dumps(
            {"strategy": sharding.name, "optimizer_format": sharding.optimizer_format,
             "world_size": dist.world_size}))
    dist.barrier()
    if dist.is_main:
        _fsync_dir_files(tmp)
        atomic_write_text(tmp / COMPLETE_MARKER, json.dumps({"step": step}))
        os.replace(tmp, final)
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def _fsync_dir_files(directory: Path) -> None:
    for f in directory.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
            and (p / COMPLETE_MARKER).is_file()]
    return sorted(done, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(path: Path, model, optimizer, dist: Dist, sharding=None) -> dict[str, Any]:
    """Restore weights, optimiser, RNG state; return the trainer state (step, data position...)."""
    from safetensors.torch import load_file

    sharding = sharding or Sharding(None, dist)
    if not (path / COMPLETE_MARKER).is_file():
        raise TrainingError(f"{path} is not a complete checkpoint", hint="pass a checkpoints/step-* directory")
    written = json.loads((path / "sharding.json").read_text()) if (path / "sharding.json").is_file() else \
        {"strategy": "single-process or DDP", "optimizer_format": "torch", "world_size": None}
    if written["optimizer_format"] != sharding.optimizer_format:
        raise TrainingError(
            f"{path} was written by a {written['strategy']} run and this run uses {sharding.name}",
            hint="resume with the train.distributed setting (and launcher) the run started with")
    if sharding.per_rank_optimizer and written["world_size"] != dist.world_size:
        raise TrainingError(
            f"{path} holds optimiser partitions of {written['world_size']} processes; this run has {dist.world_size}",
            hint=f"resume with {written['world_size']} processes")
    # Weights first, then the optimiser: ZeRO-3's optimiser state holds the exact fp32 master
    # weights and must be restored last (see DeepSpeedZero3.load_trainable_state).
    sharding.load_trainable_state(model, load_file(str(path / "trainable.safetensors")))
    # The optimiser state is our own file, loaded with weights_only so no code can run.
    if sharding.per_rank_optimizer:
        optim = sharding.read_optimizer_file(path / f"optimizer-rank{dist.rank}.pt")
    else:
        optim = sharding.read_optimizer_file(path / "optimizer.pt")
    sharding.load_optimizer_state(model, optimizer, optim)
    rank_file = path / f"rng-rank{dist.rank}.json"
    if rank_file.is_file():
        rng = json.loads(rank_file.read_text())
        torch_rng = load_file(str(path / f"torch_rng-rank{dist.rank}.safetensors"))["state"]
        _restore_rng(rng, torch_rng)
    return json.loads((path / "trainer_state.json").read_text())


# --------------------------------------------------------------------------- metrics


class MetricsLog:
    """Appends metric records to metrics.jsonl and forwards them to the chosen trackers."""

    def __init__(self, path: Path, report_to: list[str], run_name: str, config: dict, enabled: bool, resume: bool):
        self.path = path
        self.enabled = enabled
        self.trackers: list[Any] = []
        if not enabled:
            return
        if not resume:
            path.write_text("")
        for name in report_to:
            if name == "none":
                continue
            self.trackers.append(_open_tracker(name, path.parent, run_name, config))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        step = record.get("step", 0)
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        for kind, tracker in self.trackers:
            if kind == "tensorboard":
                for k, v in numbers.items():
                    tracker.add_scalar(k, v, step)
            elif kind == "wandb":
                tracker.log(numbers, step=step)
            elif kind == "mlflow":
                tracker.log_metrics(numbers, step=step)

    def close(self) -> None:
        for kind, tracker in self.trackers:
            if kind == "tensorboard":
                tracker.close()
            elif kind == "wandb":
                tracker.finish()
            elif kind == "mlflow":
                tracker.end_run()


def _open_tracker(name: str, out_dir: Path, run_name: str, config: dict):
    try:
        if name == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            return name, SummaryWriter(log_dir=str(out_dir / "tensorboard"))
        if name == "wandb":
            import wandb

            return name, wandb.init(name=run_name, config=config)
        import mlflow

        mlflow.start_run(run_name=run_name)
        mlflow.log_params({k: str(v) for k, v in config.items()})
        return name, mlflow
    except ImportError:
        raise TrainingError(f"report_to: {name} needs the `{name}` package",
                            hint=f"pip install {name}, or remove it from train.report_to") from None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss(metrics_path: Path, png: Path) -> Path | None:
    """Training and validation loss against optimiser step, as a PNG."""
    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.5)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", lw=1.5)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss (nats per trained token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png
