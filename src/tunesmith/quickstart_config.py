"""The config of `tunesmith quickstart`, with its command-line flags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import Field

from tunesmith.config import Flag, StrictModel
from tunesmith.models.config import ModelConfig


class QuickstartConfig(StrictModel):
    """`tunesmith quickstart`: data -> train -> eval -> merge -> export -> serve on the demo task."""

    out: Annotated[Path, Flag("--out", "-o")] = Field(Path("quickstart-out"), description="where every stage writes")
    model: Annotated[ModelConfig, Flag("--model", key="path",
                                       help="base model: `default` (the embedded demo model), a directory or a hub id")
                     ] = Field(default_factory=ModelConfig)
    overwrite: Annotated[bool, Flag()] = Field(False, description="replace an existing output directory")
    steps: Annotated[Optional[int], Flag("--steps")] = Field(
        None, ge=1, description="training steps; default: 1 epoch, or default_model_steps for the embedded model")
    default_model_steps: int = Field(150, ge=1)
    learning_rate: Optional[float] = Field(None, gt=0, description="default: 5e-3 for the embedded model, else 2e-4")
    max_seq_len: int = Field(256, ge=64, description="the demo tickets fit in 256 tokens")
    eval_limit: Optional[int] = Field(120, ge=1, description="held-out examples to evaluate (None: all)")
    gguf_quant: Literal["f16", "q8_0", "q4_0"] = "q8_0"
    serve: Annotated[bool, Flag()] = Field(
        True, description="start the server and ask the tuned adapter a question at the end")
    dpo: Annotated[bool, Flag()] = Field(
        False, description="after the SFT LoRA, train DPO on the demo preference pairs (the SFT adapter is its "
                           "reference) and compare base, SFT and SFT + DPO on the held-out tickets")
    dpo_steps: Optional[int] = Field(None, ge=1, description="DPO steps; default 60 for the embedded model, else 20")
    dpo_learning_rate: Optional[float] = Field(None, gt=0, description="default: a tenth of the SFT learning rate")
    dpo_beta: float = Field(0.1, gt=0, description="DPO's beta (the paper's and TRL's default)")
    seed: int = 42
