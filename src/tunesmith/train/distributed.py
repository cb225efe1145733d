"""Multi-process training strategies: DDP, FSDP (torch `fully_shard`) and DeepSpeed ZeRO-3.

`sft.run` talks to one `Sharding` object and never to the strategy directly:

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

import contextlib
import math
import os
from pathlib import Path
from typing import Any

import torch

from tunesmith.train.config import TrainConfig
from tunesmith.errors import TrainingError

STRATEGIES = ("none", "ddp", "fsdp", "deepspeed_zero3")
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


def no_sync(model, sync: bool):
    """Skip the gradient all-reduce on micro-batches before the last one of a step (DDP only:
    FSDP reduce-scatters every micro-batch so unsharded gradients never pile up, and ZeRO-3
    accumulates into its gradient partitions)."""
    if not sync and isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def unwrap(model):
    """The PEFT / transformers model inside a DDP module or a DeepSpeed engine (FSDP2 shards in place)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model


class Sharding:
    """One process: nothing is wrapped, every tensor is local."""

    name = "none"
    #: how a checkpoint's optimizer state is laid out; a run resumes only from its own layout.
    optimizer_format = "torch"
    #: whether gathering the full state is a collective every rank must join.
    collective_state = False
    #: whether each rank checkpoints its own optimiser partition (optimizer-rankN.pt).
    per_rank_optimizer = False

    def __init__(self, cfg: TrainConfig | None, dist):
        self.cfg = cfg
        self.dist = dist

    @property
    def load_device(self) -> str:
        return self.dist.device

    @property
    def loss_scale(self) -> float:
        """Factor on the token-weighted loss before backward: every strategy here averages
        gradients over the processes, and the loss is already divided by all ranks' tokens."""
        return float(self.dist.world_size)

    def describe(self) -> str:
        return "one process"

    def wrap(self, model):
        return model

    def wrap_optimizer(self, model, optimizer):
        return model, optimizer

    def clip_grad_norm(self, model, optimizer, max_norm: float) -> float:
        return float(torch.nn.utils.clip_grad_norm_(
            [p for p in model.parameters() if p.requires_grad], max_norm).item())

    def step(self, model, optimizer) -> None:
        optimizer.step()

    # -- full tensors (collectives in the sharded strategies)

    def trainable_state(self, model) -> dict[str, torch.Tensor]:
        return {n: p.detach().to("cpu").clone() for n, p in unwrap(model).named_parameters() if p.requires_grad}

    def load_trainable_state(self, model, state: dict[str, torch.Tensor]) -> None:
        params = _trainable_params(unwrap(model), state)
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(state[name].to(p.device, p.dtype))

    def optimizer_state(self, model, optimizer) -> dict[str, Any] | None:
        """The optimiser state to checkpoint (on rank 0; None elsewhere)."""
        return optimizer.state_dict() if self.dist.is_main else None

    def read_optimizer_file(self, file: Path) -> dict[str, Any]:
        # The optimiser state is our own file, loaded with weights_only so no code can run.
        return torch.load(file, map_location="cpu", weights_only=True)

    def load_optimizer_state(self, model, optimizer, state: dict[str, Any] | None) -> None:
        optimizer.load_state_dict(state)

    def save_pretrained(self, model, target: Path) -> None:
        """Write `adapter/` (or `model/`) from rank 0; every rank calls it."""
        if self.dist.is_main:
            unwrap(model).save_pretrained(target, safe_serialization=True)

    @torch.no_grad()
    def ranks_agree(self, model) -> bool:
        """Whether every rank holds bit-identical trainable weights."""
        if not self.dist.enabled:
            return True
        s = sq = mx = 0.0
        for name, tensor in self._full_trainable_tensors(model):
            t = tensor.detach().float()
            s += t.sum().item()
            sq += (t * t).sum().item()
            mx = max(mx, t.abs().max().item())
        digest = torch.tensor([s, sq, mx], dtype=torch.float64, device=self._collective_device())
        gathered = [torch.zeros_like(digest) for _ in range(self.dist.world_size)]
        torch.distributed.all_gather(gathered, digest)
        return all(torch.equal(g, gathered[0]) for g in gathered)

    def _full_trainable_tensors(self, model):
        for name, p in unwrap(model).named_parameters():
            if p.requires_grad:
                yield name, p

    def _collective_device(self) -> str:
        return self.dist.device


class DDP(Sharding):
    """Every process holds the whole model; gradients are averaged with all-reduce."""

    name = "ddp"

    def describe(self) -> str:
        return f"DDP over {self.dist.world_size} processes"

    def wrap(self, model):
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[self.dist.local_rank] if self.dist.device.startswith("cuda") else None)


class FSDP(Sharding):
    """torch FSDP2 (`fully_shard`): parameters, gradients and optimiser state are sharded
    across processes; each decoder layer is gathered only while it computes."""

    name = "fsdp"
    collective_state = True

    def __init__(self, cfg: TrainConfig, dist, cpu_offload: bool = False):
        super().__init__(cfg, dist)
        self.cpu_offload = cpu_offload and dist.device.startswith("cuda")
        self.offload_ignored = cpu_offload and not self.cpu_offload

    @property
    def load_device(self) -> str:
        # Load the whole base on CPU; fully_shard moves only this rank's shards to the GPU.
        return "cpu"

    def describe(self) -> str:
        unit = "each decoder layer" if self.cfg.train.fsdp_wrap == "layer" else "the whole model"
        text = f"FSDP over {self.dist.world_size} processes, sharding {unit}"
        if self.cpu_offload:
            text += ", parameters offloaded to CPU"
        if self.offload_ignored:
            text += " (train.fsdp_cpu_offload has no effect on CPU)"
        return text

    def wrap(self, model):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh("cuda" if self.dist.device.startswith("cuda") else "cpu", (self.dist.world_size,))
        kwargs: dict[str, Any] = {"mesh": mesh}
        if self.cpu_offload:
            kwargs["offload_policy"] = CPUOffloadPolicy()
        dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
        if len(dtypes) > 1:
            # A bf16 base with fp32 LoRA weights: compute in the base's dtype, reduce in fp32.
            low = min(dtypes, key=lambda d: torch.finfo(d).bits)
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32)
        if self.cfg.train.fsdp_wrap == "layer":
            classes = set(_no_split_modules(model))
            layers = [m for m in model.modules() if type(m).__name__ in classes]
            if not layers:
                raise TrainingError(
                    f"train.fsdp_wrap: layer found no decoder layer in {type(unwrap(model)).__name__}",
                    hint="set train.fsdp_wrap: model to shard the model as one unit")
            for layer in layers:
                fully_shard(layer, **kwargs)
        fully_shard(model, **kwargs)
        return model

    def trainable_state(self, model) -> dict[str, torch.Tensor]:
        return {n: t.to("cpu").clone() for n, t in self._full_trainable_tensors(model)}

    def _full_trainable_tensors(self, model):
        for name, p in model.named_parameters():
            if p.requires_grad:
                yield name, _full(p.detach())

    def load_trainable_state(self, model, state: dict[str, torch.Tensor]) -> None:
        from torch.distributed.tensor import DTensor, distribute_tensor

        params = _trainable_params(model, state)
        with torch.no_grad():
            for name, p in params.items():
                full = state[name].to(p.dtype)
                if isinstance(p, DTensor):
                    local = distribute_tensor(full.to(p.device_mesh.device_type), p.device_mesh, p.placements)
                    p.to_local().copy_(local.to_local())
                else:
                    p.copy_(full.to(p.device))

    def optimizer_state(self, model, optimizer) -> dict[str, Any] | None:
        """The optimiser state with every sharded tensor gathered: the layout of a single-process
        run's `optimizer.state_dict()`, so checkpoints move between 1 process, DDP and FSDP."""
        full_state = {}
        for p, values in ((p, optimizer.state[p]) for g in optimizer.param_groups for p in g["params"]):
            gathered = {}
            for k, v in values.items():
                if isinstance(v, torch.Tensor) and v.dim() > 0:
                    full = _full(v)  # a collective: every rank takes part, only rank 0 keeps a copy
                    if self.dist.is_main:
                        gathered[k] = full.to("cpu").clone()
                else:
                    gathered[k] = v
            full_state[p] = gathered
        if not self.dist.is_main:
            return None
        state = optimizer.state_dict()
        params = [p for g in optimizer.param_groups for p in g["params"]]
        state["state"] = {i: full_state[p] for i, p in enumerate(params) if p in full_state and full_state[p]}
        return state

    def load_optimizer_state(self, model, optimizer, state: dict[str, Any] | None) -> None:
        from torch.distributed.tensor import DTensor, distribute_tensor

        optimizer.load_state_dict(state)  # full tensors: now cut each into this rank's shard
        for p in (p for g in optimizer.param_groups for p in g["params"]):
            if not isinstance(p, DTensor):
                continue
            values = optimizer.state.get(p, {})
            for k, v in list(values.items()):
                if isinstance(v, torch.Tensor) and not isinstance(v, DTensor) and tuple(v.shape) == tuple(p.shape):
                    values[k] = distribute_tensor(v.to(p.device_mesh.device_type), p.device_mesh, p.placements)

    def save_pretrained(self, model, target: Path) -> None:
        from peft.utils.other import EMBEDDING_LAYER_NAMES

        state = {}
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        # Full fine-tuning gathers every tensor; LoRA the adapter's, plus the embeddings PEFT
        # saves when the vocabulary grew.
        keys = set(model.state_dict())
        # named_parameters lists a tied weight (lm_head sharing the input embeddings) once.
        tensors = list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers() if n in keys]
        for name, p in tensors:
            embedding = any(f"{e}." in name for e in EMBEDDING_LAYER_NAMES)
            wanted = self.cfg.method == "full" or embedding or name in trainable
            if wanted:
                full = _full(p.detach())
                if self.dist.is_main:
                    state[name] = full.to("cpu").clone()
        if self.dist.is_main:
            model.save_pretrained(target, safe_serialization=True, state_dict=state)


class DeepSpeedZero3(Sharding):
    """DeepSpeed ZeRO stage 3 through `deepspeed.initialize`, with tunesmith's own optimiser
    (torch AdamW) and learning-rate schedule; clipping happens inside the engine's step."""

    name = "deepspeed_zero3"
    optimizer_format = "deepspeed"
    collective_state = True
    per_rank_optimizer = True

    def __init__(self, cfg: TrainConfig, dist, offload_optimizer: bool = False, offload_params: bool = False):
        super().__init__(cfg, dist)
        self.offload_optimizer = offload_optimizer
        self.offload_params = offload_params
        self.engine = None

    @property
    def load_device(self) -> str:
        return "cpu"

    def describe(self) -> str:
        text = f"DeepSpeed ZeRO-3 over {self.dist.world_size} processes"
        offloaded = [w for w, on in (("optimiser state", self.offload_optimizer),
                                     ("parameters", self.offload_params)) if on]
        return text + (f", {' and '.join(offloaded)} offloaded to CPU" if offloaded else "")

    def ds_config(self, model) -> dict[str, Any]:
        s = self.cfg.train
        zero: dict[str, Any] = {"stage": 3, "stage3_gather_16bit_weights_on_model_save": False}
        if self.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": self.dist.device.startswith("cuda")}
        if self.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": self.dist.device.startswith("cuda")}
        dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
        if torch.float16 in dtypes:
            raise TrainingError(
                "train.distributed: deepspeed_zero3 with fp16 weights needs DeepSpeed's dynamic loss scaling, "
                "which tunesmith's token-weighted backward pass does not go through",
                hint="set model.dtype: bf16 (or fp32), or use train.distributed: fsdp")
        return {
            "train_micro_batch_size_per_gpu": s.micro_batch_size,
            # tunesmith accumulates itself (token-weighted); ZeRO-3 adds every backward into its
            # gradient partitions until the step.
            "gradient_accumulation_steps": 1,
            "train_batch_size": s.micro_batch_size * self.dist.world_size,
            "gradient_clipping": s.max_grad_norm,
            "zero_optimization": zero,
            "bf16": {"enabled": torch.bfloat16 in dtypes},
            "fp16": {"enabled": torch.float16 in dtypes},
            "zero_allow_untested_optimizer": True,
            "zero_force_ds_cpu_optimizer": False,
            "steps_per_print": 2**31 - 1,
            "wall_clock_breakdown": False,
        }

    def wrap_optimizer(self, model, optimizer):
        if not self.dist.device.startswith("cuda"):
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        try:
            import deepspeed
        except ImportError:
            raise TrainingError("train.distributed: deepspeed_zero3 needs the deepspeed package",
                                hint="pip install deepspeed") from None
        if not self.dist.device.startswith("cuda"):
            _skip_shared_memory_collectives(deepspeed)
        engine, ds_optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                          config=self.ds_config(model))
        self.engine = engine
        return engine, ds_optimizer

    def clip_grad_norm(self, model, optimizer, max_norm: float) -> float:
        # The norm of the partitioned gradients (a collective); the engine's step clips to
        # train.max_grad_norm (gradient_clipping in the DeepSpeed config).
        norms = torch.stack([torch.as_tensor(n, dtype=torch.float64) for n in optimizer._get_norm_groups()])
        # DeepSpeed reports a group whose norm is NaN/inf as -1: that is a non-finite norm, and
        # the divergence guard must see it (the engine would silently skip the update).
        if bool((norms < 0).any()):
            return math.inf
        return float(torch.linalg.vector_norm(norms).item())

    def step(self, model, optimizer) -> None:
        self.engine.step()

    def _gathered(self, params, modifier_rank=None):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)

    def _full_trainable_tensors(self, model):
        for name, p in unwrap(model).named_parameters():
            if p.requires_grad:
                with self._gathered([p]):
                    yield name, p.detach().to("cpu").clone()

    def trainable_state(self, model) -> dict[str, torch.Tensor]:
        return dict(self._full_trainable_tensors(model))

    def load_trainable_state(self, model, state: dict[str, torch.Tensor]) -> None:
        params = _trainable_params(unwrap(model), state)
        for name, p in params.items():
            with self._gathered([p], modifier_rank=0), torch.no_grad():
                if self.dist.is_main:
                    p.copy_(state[name].to(p.device, p.dtype))
        # ZeRO-3 keeps fp32 master partitions in the optimiser: refresh them from the weights
        # (early stopping restoring the best weights). On resume `load_optimizer_state` comes
        # after this and overwrites them with the checkpoint's exact fp32 masters, which a bf16
        # run needs: masters refreshed from bf16 weights moved a resumed run by 1e-3.
        refresh = getattr(self.engine.optimizer, "refresh_fp32_params", None) if self.engine else None
        if refresh is not None:
            refresh()

    def optimizer_state(self, model, optimizer) -> dict[str, Any] | None:
        # Each rank's partition: fp32 master weights, the AdamW state of those partitions
        # (moments and step count) and param groups, and the loss scaler. Checkpoints hold one
        # file per rank and resume with the same number of processes (`load_checkpoint` checks).
        return optimizer.state_dict()

    def read_optimizer_file(self, file: Path) -> dict[str, Any]:
        # weights_only, with the two DeepSpeed classes its optimiser state holds allowed.
        from deepspeed.runtime.fp16.loss_scaler import LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum

        with torch.serialization.safe_globals([ZeroStageEnum, LossScaler]):
            return torch.load(file, map_location="cpu", weights_only=True)

    def load_optimizer_state(self, model, optimizer, state) -> None:
        # Restores this rank's AdamW state, its fp32 master partition and, from that, the
        # partitioned model weights: a resumed run continues bit-identically (tested on CPU).
        # DeepSpeed indexes the list by rank; each rank passes only its own partition.
        partitions: list[Any] = [None] * self.dist.world_size
        partitions[self.dist.rank] = state
        optimizer.load_state_dict(partitions, load_optimizer_states=True, load_from_fp32_weights=True)

    def save_pretrained(self, model, target: Path) -> None:
        inner = unwrap(model)
        state = {}
        params = [(n, p) for n, p in inner.named_parameters()
                  if self.cfg.method == "full" or p.requires_grad
                  or any(f"{e}." in n for e in ("embed_tokens", "lm_head"))]
        for name, p in params:
            with self._gathered([p]):
                if self.dist.is_main:
                    state[name] = p.detach().to("cpu").clone()
        if self.cfg.method == "full" and self.dist.is_main:
            state.update({n: b.detach().to("cpu").clone() for n, b in inner.named_buffers()
                          if n in inner.state_dict()})
        if self.dist.is_main:
            inner.save_pretrained(target, safe_serialization=True, state_dict=state)

    def _collective_device(self) -> str:
        return self.dist.device


# --------------------------------------------------------------------------- helpers


def _skip_shared_memory_collectives(deepspeed) -> None:
    """On CPU, DeepSpeed compiles a shared-memory all-reduce extension the first time a process
    group starts (minutes on a small machine). The gloo process group tunesmith already joined
    does the same work, so mark that extension unavailable; DeepSpeed then uses gloo."""
    ops = deepspeed.ops.__dict__
    compatible = ops.get("__compatible_ops__")
    if compatible is None:  # not probed yet: record only this answer, skip the probe
        compatible = ops["__compatible_ops__"] = {}
    compatible["deepspeed_shm_comm"] = False


def _full(p: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly sharded) parameter; a collective for DTensors."""
    from torch.distributed.tensor import DTensor

    return p.full_tensor() if isinstance(p, DTensor) else p


def _trainable_params(model, state: dict[str, torch.Tensor]) -> dict[str, torch.nn.Parameter]:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    if missing:
        raise TrainingError(f"checkpoint lacks {len(missing)} trainable tensors (first: {missing[0]})",
                            hint="resume with the same method and LoRA settings the run started with")
    unknown = [n for n in state if n not in params]
    if unknown:
        raise TrainingError(f"checkpoint holds {len(unknown)} tensors this model does not have (first: {unknown[0]})",
                            hint="resume with the same model, method and LoRA settings the run started with")
    return {n: params[n] for n in state}


def _no_split_modules(model) -> list[str]:
    """The decoder-layer class names transformers declares for the model (e.g. LlamaDecoderLayer)."""
    for m in model.modules():
        names = getattr(m, "_no_split_modules", None)
        if names:
            return list(names)
    return []
