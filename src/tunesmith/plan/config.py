"""`tunesmith plan`: the config of the memory planner, and the one place it imports the training
config from (so a move of the training config classes changes one import here)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

from pydantic import Field, field_validator

from tunesmith.config import Flag, StrictModel
from tunesmith.train.config import TrainConfig  # noqa: F401  (re-exported: the planner's single import of it)


class PlanConfig(StrictModel):
    """`tunesmith plan`: the memory a training config needs, per component, and whether it fits."""

    train_config: Annotated[Optional[Path], Flag(argument=True)] = Field(
        None, description="training config YAML (as for `tunesmith train`); none: the training defaults")
    overrides: Annotated[list[str], Flag("--set", repeat=True)] = Field(
        default_factory=list, description="override a key of the training config, as `train` takes it (repeatable)")
    gpu: Annotated[Optional[str], Flag("--gpu")] = Field(
        None, description="target GPU, e.g. h100-80gb, a100-40gb, l4-24gb (`--gpu list` lists them); "
        "none: this machine's RAM")
    memory: Annotated[Optional[str], Flag("--memory")] = Field(
        None, description="memory per GPU instead of a GPU name, e.g. 24GiB, 16GB")
    gpus: Annotated[int, Flag("--gpus")] = Field(
        1, ge=1, le=4096, description="GPUs (processes) the run uses; fsdp and deepspeed_zero3 shard across them")
    trained_share: Annotated[Optional[float], Flag("--trained-share")] = Field(
        None, gt=0, le=1, description="share of token positions that carry loss (the output head runs only "
        "there); default: measured on the first training examples when the data is local, else 0.5")
    serve_batch: Annotated[int, Flag("--serve-batch")] = Field(
        8, ge=1, description="sequences served together, for the KV-cache figure")
    serve_context: Annotated[Optional[int], Flag("--serve-context")] = Field(
        None, ge=1, description="tokens per served sequence for the KV cache; default: train.max_seq_len")

    @field_validator("gpu")
    @classmethod
    def _lower(cls, value: Optional[str]) -> Optional[str]:
        return value.strip().lower() if isinstance(value, str) else value
