"""FSDP2 (torch `fully_shard`) as a `Sharding`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tunesmith.train.config import TrainConfig
from tunesmith.errors import TrainingError
from tunesmith.train.sharding import Sharding, _trainable_params, unwrap


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


def _full(p: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly sharded) parameter; a collective for DTensors."""
    from torch.distributed.tensor import DTensor

    return p.full_tensor() if isinstance(p, DTensor) else p


def _no_split_modules(model) -> list[str]:
    """The decoder-layer class names transformers declares for the model (e.g. LlamaDecoderLayer)."""
    for m in model.modules():
        names = getattr(m, "_no_split_modules", None)
        if names:
            return list(names)
    return []
