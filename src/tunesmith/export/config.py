"""The configs of `tunesmith merge`, `tunesmith export gguf|ollama` and `tunesmith check parity`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import Field

from tunesmith.config import Flag, StrictModel
from tunesmith.models.config import Dtype


class MergeConfig(StrictModel):
    """`tunesmith merge`: fold a LoRA adapter into an unquantised copy of its base model."""

    run: Annotated[str, Flag(argument=True)] = Field("runs/sft", description="training run directory or adapter directory")
    out: Annotated[Path, Flag("--out", "-o")] = Field(Path("merged"), description="directory for the merged model")
    base: Annotated[Optional[str], Flag("--base")] = Field(
        None, description="base model to merge into (default: the one the run recorded)")
    dtype: Annotated[Dtype, Flag("--dtype")] = Field(
        "auto", description="auto (16-bit on GPU, fp32 on CPU), fp32, bf16 or fp16")
    device: Optional[str] = None
    max_shard_size: str = "2GB"
    parity_tolerance: Optional[float] = Field(
        None, gt=0, description="largest allowed |logit difference| (absolute); default: 1e-4 x the largest |logit| in "
        "fp32, 2e-2 x in 16-bit")


GGUFQuant = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l",
                    "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k"]


class ExportConfig(StrictModel):
    """`tunesmith export gguf|ollama`: a GGUF file for llama.cpp, optionally with an Ollama Modelfile."""

    source: Annotated[str, Flag(argument=True)] = Field(
        "runs/sft", description="training run dir, adapter dir or merged model dir")
    out: Annotated[Path, Flag("--out", "-o")] = Field(
        Path("exports"), description="FILE.gguf (or a directory) for gguf; a directory for ollama")
    format: Literal["gguf", "ollama"] = Field("gguf", description="the export verb: gguf or ollama")
    quant: Annotated[GGUFQuant, Flag("--quant", "-q")] = Field(
        "f16", description="f16, bf16, f32, q8_0, q4_0; K-quants (q4_k_m...) need llama-cpp-python")
    ollama: Annotated[bool, Flag()] = Field(False, description="also write an Ollama Modelfile next to the GGUF")
    name: Annotated[Optional[str], Flag("--name")] = Field(
        None, description="model name in the GGUF metadata and the Ollama tag")
    system_prompt: Annotated[Optional[str], Flag("--system-prompt")] = Field(
        None, description="default system prompt (Modelfile SYSTEM)")
    ollama_template: Annotated[Optional[Path], Flag("--ollama-template")] = Field(
        None, description="use this Go TEMPLATE file instead of the derived one")
    base: Annotated[Optional[str], Flag("--base")] = Field(
        None, description="base model of the adapter (default: the run's base)")
    device: Optional[str] = None
    verify: bool = True
    min_agreement: Optional[float] = Field(
        None, ge=0, le=1, description="top-1 agreement required; default 0.99 (f32/f16/bf16), 0.95 (q8_0)")
    parity: bool = Field(True, description="run `check parity` on the exported files")


class ParityConfig(StrictModel):
    """`tunesmith check parity`: do training, serving, GGUF and Ollama render the same tokens?"""

    source: Annotated[str, Flag(argument=True)] = Field(
        "runs/sft", description="training run dir, adapter dir, model dir, or export dir")
    gguf: Annotated[Optional[Path], Flag("--gguf")] = Field(
        None, description="GGUF file to check (default: the export dir's)")
    modelfile: Annotated[Optional[Path], Flag("--modelfile")] = Field(None, description="Ollama Modelfile to check")
    data: Annotated[Optional[Path], Flag("--data")] = Field(
        None, description="also check the first conversations of this JSONL")
    limit: Annotated[int, Flag("--limit")] = Field(8, ge=1, description="how many conversations of --data")
    system_prompt: Annotated[Optional[str], Flag("--system-prompt")] = Field(
        None, description="default system prompt served with the model")
