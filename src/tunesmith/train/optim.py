"""The optimiser (AdamW, or bitsandbytes' 8-bit variants) and the learning-rate schedule."""

from __future__ import annotations

import math

import torch

from tunesmith.train.config import TrainSettings
from tunesmith.errors import TrainingError
from tunesmith.train.sharding import unwrap


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
