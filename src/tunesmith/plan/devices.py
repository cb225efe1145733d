"""Memory budgets: named GPUs, explicit sizes (`24GiB`), or this machine's RAM."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tunesmith.errors import ConfigError

GIB = 1024**3

# Memory that `torch.cuda.get_device_properties(0).total_memory` reports, in GiB: a little less than
# the marketed figure (which is in GB, and part of which the driver keeps).
GPUS: dict[str, tuple[str, float, bool]] = {
    # name: (description, GiB, bf16 support)
    "h200-141gb": ("NVIDIA H200 141 GB", 139.8, True),
    "h100-80gb": ("NVIDIA H100 80 GB", 79.1, True),
    "h100-94gb": ("NVIDIA H100 NVL 94 GB", 93.1, True),
    "a100-80gb": ("NVIDIA A100 80 GB", 79.1, True),
    "a100-40gb": ("NVIDIA A100 40 GB", 39.4, True),
    "l40s-48gb": ("NVIDIA L40S 48 GB", 44.4, True),
    "a6000-48gb": ("NVIDIA RTX A6000 48 GB", 47.5, True),
    "a10-24gb": ("NVIDIA A10 24 GB", 22.0, True),
    "l4-24gb": ("NVIDIA L4 24 GB", 22.0, True),
    "rtx4090-24gb": ("NVIDIA GeForce RTX 4090 24 GB", 23.6, True),
    "rtx3090-24gb": ("NVIDIA GeForce RTX 3090 24 GB", 23.6, True),
    "rtx4080-16gb": ("NVIDIA GeForce RTX 4080 16 GB", 15.6, True),
    "v100-32gb": ("NVIDIA V100 32 GB", 31.7, False),
    "t4-16gb": ("NVIDIA T4 16 GB", 14.6, False),
}

# What one process uses on a GPU before any tensor: the CUDA context and loaded kernels.
CUDA_CONTEXT_BYTES = int(0.6 * GIB)

_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
          "kib": 1024, "mib": 1024**2, "gib": GIB, "tib": 1024**4, "k": 1024, "m": 1024**2, "g": GIB, "t": 1024**4}


@dataclass(frozen=True)
class Target:
    """Where the run trains: `gpu` True for CUDA devices (bf16 when supported), False for CPU RAM."""

    name: str
    bytes: int
    gpu: bool
    bf16: bool = True

    def describe(self) -> str:
        return f"{self.name} ({self.bytes / GIB:.1f} GiB)"


def parse_memory(text: str) -> int:
    """`24GiB`, `80GB`, `512MiB`, `16g` -> bytes (GB = 10^9, GiB and bare G = 2^30)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text or "")
    unit = (match[2] or "gib").lower() if match else None
    if not match or unit not in _UNITS:
        raise ConfigError(f"memory size {text!r} is not a number with a unit",
                          hint="write it like 24GiB, 80GB or 512MiB")
    return int(float(match[1]) * _UNITS[unit])


def resolve_target(gpu: str | None, memory: str | None) -> Target:
    """The device to plan for: a named GPU, a GPU of `memory` bytes, or (neither) this machine's RAM."""
    if gpu is not None:
        if gpu not in GPUS:
            import difflib

            close = [n for n in GPUS if n.startswith(gpu)] or difflib.get_close_matches(gpu, list(GPUS), n=1, cutoff=0.4)
            raise ConfigError(f"unknown GPU {gpu!r}" + (f"; did you mean {close[0]}?" if close else ""),
                              hint="known GPUs: " + ", ".join(GPUS) + "; or give --memory 24GiB")
        description, gib, bf16 = GPUS[gpu]
        size = parse_memory(memory) if memory else int(gib * GIB)
        return Target(name=description, bytes=size, gpu=True, bf16=bf16)
    if memory is not None:
        return Target(name="a GPU", bytes=parse_memory(memory), gpu=True)
    import psutil

    return Target(name="this machine's RAM", bytes=int(psutil.virtual_memory().total), gpu=False, bf16=False)
