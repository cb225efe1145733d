"""Multi-process training strategies: DDP, FSDP (torch `fully_shard`) and DeepSpeed ZeRO-3.

The training loop talks to one `Sharding` object and never to the strategy directly:

- `load_device`: where the base model is loaded (sharded strategies load it on CPU in every
  process, then FSDP moves only each rank's shards to its GPU; DeepSpeed moves the whole model
  to the GPU before partitioning it, so with ZeRO-3 the base must fit on one GPU at start);
- `wrap(model)` then `wrap_optimizer(model, optimizer)`: DDP wraps the module; FSDP shards
  each decoder layer and the root (so the optimiser must be built after `wrap`); ZeRO-3 hands
  both to `deepspeed.initialize` and returns the engine;
- `loss_scale`: every strategy here averages gradients over processes, so the token-weighted
  loss (already divided by the trained tokens of all ranks) is multiplied by the world size;
- `clip_grad_norm`, `step`: gradient norm and optimiser step that know about sharded gradients;
- `trainable_state` / `load_trainable_state`, `optimizer_state` / `load_optimizer_state`,
  `save_pretrained`, `ranks_agree`: collectives that every rank calls together; the tensors
  they return are the full (gathered) ones, so checkpoints and `adapter/` look the same as in a
  single-process run and only rank 0 writes them.
"""

from __future__ import annotations

import os

from tunesmith.train.config import TrainConfig
from tunesmith.errors import TrainingError
from tunesmith.train.fsdp import FSDP
from tunesmith.train.sharding import DDP, Sharding, no_sync, unwrap
from tunesmith.train.zero3 import DeepSpeedZero3

__all__ = ["DDP", "FSDP", "DeepSpeedZero3", "Sharding", "for_run", "no_sync", "resolve_strategy", "unwrap"]

_TRUE = ("1", "true", "yes")


def resolve_strategy(cfg: TrainConfig, world_size: int, env: dict[str, str] | None = None) -> str:
    """The strategy for this run: `none` for one process; otherwise `train.distributed`, where
    `auto` follows `accelerate launch` (ACCELERATE_USE_FSDP / ACCELERATE_USE_DEEPSPEED), else DDP."""
    env = dict(os.environ if env is None else env)
    if world_size <= 1:
        return "none"
    asked = cfg.train.distributed
    from_accelerate = None
    if env.get("ACCELERATE_USE_FSDP", "").lower() in _TRUE:
        from_accelerate = "fsdp"
    elif env.get("ACCELERATE_USE_DEEPSPEED", "").lower() in _TRUE:
        stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
        if stage != "3":
            raise TrainingError(
                f"accelerate launch asks for DeepSpeed ZeRO stage {stage}; tunesmith supports ZeRO-3 only",
                hint="set zero_stage: 3 in the accelerate config, or launch without DeepSpeed for DDP")
        from_accelerate = "deepspeed_zero3"
    if asked == "auto":
        return from_accelerate or "ddp"
    if from_accelerate and from_accelerate != asked:
        raise TrainingError(
            f"accelerate launch asks for {from_accelerate} but train.distributed is {asked}",
            hint=f"set train.distributed: {from_accelerate} (or auto), or use an accelerate config without it")
    return asked


def for_run(cfg: TrainConfig, dist, env: dict[str, str] | None = None) -> "Sharding":
    """The `Sharding` for this run, checked against the method and the machine."""
    env = dict(os.environ if env is None else env)
    name = resolve_strategy(cfg, dist.world_size, env)
    if name in ("fsdp", "deepspeed_zero3") and cfg.method == "qlora":
        raise TrainingError(
            f"train.distributed: {name} cannot shard a 4-bit QLoRA base",
            hint="use train.distributed: ddp for QLoRA on several GPUs (each holds the 4-bit base), "
                 "or method: lora with fsdp / deepspeed_zero3")
    if name == "fsdp":
        offload = cfg.train.fsdp_cpu_offload or env.get("FSDP_OFFLOAD_PARAMS", "").lower() in _TRUE
        return FSDP(cfg, dist, cpu_offload=offload)
    if name == "deepspeed_zero3":
        offload_opt = cfg.train.zero3_offload_optimizer or \
            env.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none").lower() == "cpu"
        offload_params = cfg.train.zero3_offload_params or \
            env.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "none").lower() == "cpu"
        return DeepSpeedZero3(cfg, dist, offload_optimizer=offload_opt, offload_params=offload_params)
    if name == "ddp":
        return DDP(cfg, dist)
    return Sharding(cfg, dist)
