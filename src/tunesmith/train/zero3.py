"""DeepSpeed ZeRO-3 as a `Sharding`."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from tunesmith.train.config import TrainConfig
from tunesmith.errors import TrainingError
from tunesmith.train.sharding import Sharding, _trainable_params, unwrap


class DeepSpeedZero3(Sharding):
    """DeepSpeed ZeRO stage 3 through `deepspeed.initialize`, with tunesmith's own optimiser
    (torch AdamW) and learning-rate schedule; clipping happens inside the engine's step."""

    name = "deepspeed_zero3"
    optimizer_format = "deepspeed"
    collective_state = True

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

    def save_state(self, directory: Path, model, optimizer) -> None:
        """Gathered weights from rank 0, and each rank's own optimiser partition
        (`optimizer-rankN.pt`): a checkpoint resumes with the number of processes that wrote it."""
        from safetensors.torch import save_file

        weights = self.trainable_state(model)
        torch.save(self.optimizer_state(model, optimizer), directory / f"optimizer-rank{self.dist.rank}.pt")
        if self.dist.is_main:
            save_file({k: v.contiguous() for k, v in weights.items()}, str(directory / "trainable.safetensors"))
            self._write_layout(directory)

    def load_state(self, directory: Path, model, optimizer) -> None:
        written = self._check_layout(directory)
        if written["world_size"] != self.dist.world_size:
            raise TrainingError(
                f"{directory} holds optimiser partitions of {written['world_size']} processes; "
                f"this run has {self.dist.world_size}",
                hint=f"resume with {written['world_size']} processes")
        # Weights first, then the optimiser: its state holds the exact fp32 master weights and
        # must be restored last (see load_trainable_state).
        self._load_weights(directory, model)
        state = self.read_optimizer_file(directory / f"optimizer-rank{self.dist.rank}.pt")
        self.load_optimizer_state(model, optimizer, state)

    def optimizer_state(self, model, optimizer) -> dict[str, Any] | None:
        # Each rank's partition: fp32 master weights, the AdamW state of those partitions
        # (moments and step count) and param groups, and the loss scaler. Checkpoints hold one
        # file per rank and resume with the same number of processes (`load_state` checks).
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


def _skip_shared_memory_collectives(deepspeed) -> None:
    """On CPU, DeepSpeed compiles a shared-memory all-reduce extension the first time a process
    group starts (minutes on a small machine). The gloo process group tunesmith already joined
    does the same work, so mark that extension unavailable; DeepSpeed then uses gloo."""
    ops = deepspeed.ops.__dict__
    compatible = ops.get("__compatible_ops__")
    if compatible is None:  # not probed yet: record only this answer, skip the probe
        compatible = ops["__compatible_ops__"] = {}
    compatible["deepspeed_shm_comm"] = False
