"""The one-process `Sharding` every strategy extends, and DDP.

A `Sharding` is what the training loop talks to instead of the strategy itself; see
`tunesmith.train.distributed` for the list of what it provides.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch

from tunesmith.train.config import TrainConfig
from tunesmith.errors import TrainingError


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

    # -- checkpoint files: weights, optimiser state and the layout they were written in

    def save_state(self, directory: Path, model, optimizer) -> None:
        """Write `trainable.safetensors`, `optimizer.pt` and `sharding.json` into a checkpoint
        directory (rank 0 writes; every rank calls, gathering is a collective when sharded)."""
        from safetensors.torch import save_file

        if self.collective_state or self.dist.is_main:
            weights = self.trainable_state(model)
            optim = self.optimizer_state(model, optimizer)
        if self.dist.is_main:
            save_file({k: v.contiguous() for k, v in weights.items()}, str(directory / "trainable.safetensors"))
            torch.save(optim, directory / "optimizer.pt")
            self._write_layout(directory)

    def load_state(self, directory: Path, model, optimizer) -> None:
        """Restore what `save_state` wrote, refusing a checkpoint of another layout."""
        self._check_layout(directory)
        self._load_weights(directory, model)
        self.load_optimizer_state(model, optimizer, self.read_optimizer_file(directory / "optimizer.pt"))

    def _write_layout(self, directory: Path) -> None:
        (directory / "sharding.json").write_text(json.dumps(
            {"strategy": self.name, "optimizer_format": self.optimizer_format, "world_size": self.dist.world_size}))

    def _check_layout(self, directory: Path) -> dict[str, Any]:
        file = directory / "sharding.json"
        written = json.loads(file.read_text()) if file.is_file() else \
            {"strategy": "single-process or DDP", "optimizer_format": "torch", "world_size": None}
        if written["optimizer_format"] != self.optimizer_format:
            raise TrainingError(
                f"{directory} was written by a {written['strategy']} run and this run uses {self.name}",
                hint="resume with the train.distributed setting (and launcher) the run started with")
        return written

    def _load_weights(self, directory: Path, model) -> None:
        from safetensors.torch import load_file

        self.load_trainable_state(model, load_file(str(directory / "trainable.safetensors")))

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
        digest = torch.tensor([s, sq, mx], dtype=torch.float64, device=self.dist.device)
        gathered = [torch.zeros_like(digest) for _ in range(self.dist.world_size)]
        torch.distributed.all_gather(gathered, digest)
        return all(torch.equal(g, gathered[0]) for g in gathered)

    def _full_trainable_tensors(self, model):
        for name, p in unwrap(model).named_parameters():
            if p.requires_grad:
                yield name, p


class DDP(Sharding):
    """Every process holds the whole model; gradients are averaged with all-reduce."""

    name = "ddp"

    def describe(self) -> str:
        return f"DDP over {self.dist.world_size} processes"

    def wrap(self, model):
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[self.dist.local_rank] if self.dist.device.startswith("cuda") else None)



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
