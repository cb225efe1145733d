"""The config of `tunesmith serve`, with its command-line flags."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import Field, SecretStr, field_validator

from tunesmith.config import Flag, StrictModel
from tunesmith.jobs.config import JobsConfig
from tunesmith.registry.feedback import RequestLogConfig
from tunesmith.errors import ConfigError
from tunesmith.models.config import ModelConfig

# Adapter names travel in URLs, JSON and Prometheus labels; keep them to a safe, short alphabet.
ADAPTER_NAME_PATTERN = r"[A-Za-z0-9._-]{1,64}"


def parse_adapter_specs(specs: list[str]) -> dict[str, str]:
    """--adapter NAME=PATH (or just PATH, named after its run directory) as {name: path}."""
    adapters: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            run_dir = Path(spec).expanduser().resolve()
            name, path = (run_dir.parent.name if run_dir.name == "adapter" else run_dir.name), spec
        if not name or not path:
            raise ConfigError(f"--adapter {spec!r} is not NAME=PATH", hint="example: --adapter support=runs/sft")
        if name in adapters:
            raise ConfigError(f"two adapters are named {name!r}", hint="give each --adapter a distinct NAME=")
        adapters[name] = path
    return adapters


class EngineOptions(StrictModel):
    """Where the llama.cpp and vLLM engines come from, and how long they may take to start."""

    gguf: Optional[Path] = Field(
        None, description="llama.cpp: the base or merged model as a GGUF file (e.g. from `tunesmith export gguf`)")
    llama_server: str = Field(
        "llama-server", description="llama.cpp: the llama-server binary (a name on PATH or a path)")
    vllm: str = Field("vllm", description="vLLM: the `vllm` command (a name on PATH or a path)")
    extra_args: list[str] = Field(
        default_factory=list, description="more arguments for the engine's command line, appended as given")
    startup_timeout: float = Field(
        900.0, gt=0, description="seconds the engine may take to load the model and answer its health check")
    request_timeout: float = Field(
        300.0, gt=0, description="seconds the engine may stay silent during one request before it fails with 504")


class ServeConfig(StrictModel):
    """`tunesmith serve`: one base model and many LoRA adapters behind an OpenAI-compatible API."""

    model: Annotated[ModelConfig, Flag("--model", "-m", key="path",
                                       help="base or merged model: directory, hub id or `default`"),
                     Flag("--quantization", key="quantization")] = Field(default_factory=ModelConfig)
    engine: Annotated[Literal["own", "llama.cpp", "vllm"], Flag("--engine")] = Field(
        "own", description="what generates the tokens: tunesmith's own engine, llama.cpp's llama-server "
                           "(CPUs) or vLLM (GPUs); the API in front stays the same")
    engine_options: Annotated[EngineOptions, Flag("--gguf", key="gguf",
                                                  help="the model as a GGUF file, for --engine llama.cpp")] = Field(
        default_factory=EngineOptions)
    served_model_name: Annotated[Optional[str], Flag("--served-model-name")] = Field(
        None, description="name clients pass as `model` for the base; default: the model directory's name")
    adapters: Annotated[dict[str, str], Flag("--adapter", "-a", parse=parse_adapter_specs, repeat=True,
                                             help="NAME=PATH of a run or adapter directory (repeatable); "
                                                  "PATH alone uses the directory's name")] = Field(
        default_factory=dict, description="adapter name -> training run directory or adapter directory")
    adapter_root: Annotated[Optional[Path], Flag("--adapter-root")] = Field(
        None, description="directory that runtime-loaded adapters must live under (needs --api-key); "
                          "unset: runtime loading is off")
    host: Annotated[str, Flag("--host")] = Field(
        "127.0.0.1", description="address to bind; 0.0.0.0 exposes the server to the network")
    port: Annotated[int, Flag("--port", "-p")] = Field(8000, ge=0, le=65535, description="0 picks a free port")
    api_key: Annotated[Optional[SecretStr], Flag("--api-key")] = Field(
        None, description="require `Authorization: Bearer KEY` (also read from TUNESMITH_API_KEY)")
    device: Annotated[Optional[str], Flag("--device")] = Field(
        None, description="cuda, cuda:1, cpu...; default: cuda when present")
    max_batch_size: Annotated[int, Flag("--max-batch-size")] = Field(
        32, ge=1, le=4096, description="sequences decoded together in one forward pass")
    max_queue: int = Field(256, ge=1, le=1_000_000, description="waiting sequences before requests get 429")
    max_loaded_adapters: Annotated[int, Flag("--max-loaded-adapters")] = Field(
        8, ge=1, le=4096, description="adapters kept in memory (least recently used go)")
    max_lora_rank: int = Field(256, ge=1, le=65536)
    max_body_bytes: Annotated[int, Flag("--max-body-bytes")] = Field(
        1_048_576, ge=1024, le=1 << 31, description="largest request body in bytes")
    max_tokens_limit: int = Field(4096, ge=1, description="largest max_tokens a request may ask for")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when a request gives none")
    max_n: int = Field(8, ge=1, le=256, description="largest `n` (choices per request)")
    allow_base_mismatch: bool = Field(
        False, description="serve adapters whose recorded base model has another name (shapes are still checked)")
    threads: Annotated[Optional[int], Flag("--threads")] = Field(
        None, ge=1, le=1024, description="CPU threads for the model's forward passes; default: half the cores, 1 to 8")
    drain_timeout: Annotated[float, Flag("--drain-timeout")] = Field(
        30.0, ge=0, description="seconds after SIGTERM that requests in flight may take before the server exits anyway")
    header_timeout: float = Field(10.0, gt=0, description="seconds a client may take to send a request's headers")
    body_timeout: float = Field(30.0, gt=0, description="seconds a client may take to send a request's body")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    jobs: Optional[JobsConfig] = Field(None, description="files and fine-tuning jobs API (OpenAI's); unset: off")
    registry: Annotated[Optional[Path], Flag("--registry")] = Field(
        None, description="model registry whose aliases (`tickets`, `tickets:canary`, `tickets@3`) this server "
                          "routes, rereading them while it runs; unset: off")
    registry_poll_interval: float = Field(0.5, gt=0, le=60, description="seconds between reads of the alias table")
    request_log: Optional[RequestLogConfig] = Field(
        None, description="log sampled, redacted exchanges of chosen models and take POST /v1/feedback; unset: off")

    @field_validator("adapters")
    @classmethod
    def _adapter_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.fullmatch(ADAPTER_NAME_PATTERN, name):
                raise ValueError(f"adapter name {name!r} must match {ADAPTER_NAME_PATTERN}")
        return value
