"""`ModelConfig`: which base model a stage loads and how (every stage that loads one embeds it), and
`ImportConfig`, the config of `tunesmith models import`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import Field, model_validator

from tunesmith.config import Flag, StrictModel

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


class ImportConfig(StrictModel):
    """`tunesmith models import`: a GGUF file dequantised into a Hugging Face model directory."""

    file: Annotated[Path, Flag(argument=True)] = Field(..., description="a .gguf file (llama.cpp, Ollama, LM Studio)")
    out: Annotated[Optional[Path], Flag("--out", "-o")] = Field(
        None, description="directory to write (default: the cache, keyed by the file's SHA-256; `model: FILE.gguf` "
        "in a config uses the same cache)")
    dtype: Annotated[Literal["fp32", "bf16", "fp16"], Flag("--dtype")] = Field(
        "fp32", description="`fp32` (exact), `bf16` or `fp16` (half the disk)")
