"""`tunesmith plan`: the planner's `run` as the command runs it (`--gpu list` lists the GPUs it knows)."""

from __future__ import annotations

from dataclasses import dataclass

from tunesmith.plan.config import PlanConfig
from tunesmith.plan.devices import GPUS


@dataclass
class GpuList:
    """The GPU names `--gpu` takes, with their memory."""

    def summary(self) -> str:
        return "\n".join(f"{name:<14} {gib:6.1f} GiB  {description}" for name, (description, gib, _) in GPUS.items())


def run(cfg: PlanConfig):
    """`tunesmith plan`: the memory plan of `cfg` (a `PlanResult`, not ok when it does not fit)."""
    if cfg.gpu == "list":
        return GpuList()
    from tunesmith.plan.run import run as plan

    return plan(cfg)


__all__ = ["GpuList", "run"]
