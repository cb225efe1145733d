"""`ModelConfig`: which base model a stage loads and how (every stage that loads one embeds it)."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from tunesmith.config import StrictModel

Dtype = Literal["auto", "bf16", "fp16", "fp32"]


class ModelConfig(StrictModel):
    """Which base model to load and how. `model: some/id` is shorthand for `model: {path: some/id}`."""

    path: str = Field("default", description="local directory, hub id, or `default` for the embedded demo model")
    revision: Optional[str] = None
    dtype: Dtype = "auto"
    quantization: Literal["none", "4bit", "8bit"] = Field(
        "none", description="load the base in 4bit or 8bit (bitsandbytes)")
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    bnb_4bit_double_quant: bool = True
    bnb_4bit_compute_dtype: Dtype = "auto"
    trust_remote_code: bool = False
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    allow_pickle: bool = Field(False, description="allow .bin/.pt pickle weights (can run arbitrary code)")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value
