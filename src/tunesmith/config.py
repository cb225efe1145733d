"""Typed stage configs, loaded from YAML plus `--set a.b=c` overrides.

Each pipeline stage has one pydantic config class. `load_config` reads a YAML file (keeping the
line of every key so errors can point at it), applies overrides, validates, and turns any
validation problem into a `ConfigError` that names the field, the file and line it came from,
and — for unknown keys — the closest valid key.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, Optional, TypeVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from tunesmith.errors import ConfigError

T = TypeVar("T", bound="StrictModel")


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


# --------------------------------------------------------------------------- YAML with lines


class _Source:
    """Where each key path of a loaded config came from (file line or `--set`)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.lines: dict[tuple[str, ...], int] = {}
        self.overrides: dict[tuple[str, ...], str] = {}

    def locate(self, loc: tuple[str, ...]) -> str | None:
        for n in range(len(loc), 0, -1):
            key = loc[:n]
            if key in self.overrides:
                return f"--set {self.overrides[key]}"
            if key in self.lines and self.path is not None:
                return f"{self.path}:{self.lines[key]}"
        return str(self.path) if self.path is not None else None


def _record_lines(node: yaml.Node, prefix: tuple[str, ...], lines: dict) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            lines[key] = key_node.start_mark.line + 1
            _record_lines(value_node, key, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = (*prefix, str(i))
            lines[key] = item.start_mark.line + 1
            _record_lines(item, key, lines)


def _read_yaml(path: Path, source: _Source) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(
            f"config file not found: {path}",
            hint="pass the path of a YAML file; `tunesmith <verb> --print-config` shows a full example",
        )
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML: {problem}", where=where) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"the config must be a mapping of keys to values, not a {type(data).__name__}",
            where=str(path),
        )
    if node is not None:
        _record_lines(node, (), source.lines)
    return data


# --------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b=c` into (["a", "b"], value) with the value parsed as a YAML scalar/list."""
    if "=" not in text:
        raise ConfigError(
            f"override {text!r} has no '='", hint="write overrides as --set section.key=value"
        )
    key, _, raw = text.partition("=")
    parts = [p for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in parts):
        raise ConfigError(f"override {text!r} has an empty key", hint="example: --set train.learning_rate=1e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def _apply_override(data: dict[str, Any], parts: list[str], value: Any, text: str) -> None:
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(
                f"cannot set {'.'.join(parts)}: {'.'.join(parts[: i + 1])} is a value, not a section",
                where=f"--set {text}",
            )
        node = child
    node[parts[-1]] = value


# --------------------------------------------------------------------------- error rendering


def _unwrap(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        out = []
        for arg in typing.get_args(annotation):
            out.extend(_unwrap(arg))
        return out
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    return [annotation]


def _model_at(cls: type[BaseModel], loc: Iterable[Any]) -> type[BaseModel] | None:
    current: type[BaseModel] | None = cls
    for part in loc:
        if current is None or not isinstance(part, str) or part not in current.model_fields:
            return None
        nested = [a for a in _unwrap(current.model_fields[part].annotation)
                  if isinstance(a, type) and issubclass(a, BaseModel)]
        current = nested[0] if nested else None
    return current


def _field_names(model: type[BaseModel]) -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        names.append(field.alias or name)
    return names


def _describe(cls: type[BaseModel], err: dict[str, Any], source: _Source) -> str:
    loc = tuple(str(p) for p in err["loc"])
    dotted = ".".join(loc) or "(top level)"
    where = source.locate(loc)
    prefix = f"{where}: " if where else ""
    if err["type"] == "extra_forbidden":
        parent = _model_at(cls, err["loc"][:-1])
        valid = _field_names(parent) if parent else []
        close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
        msg = f"{prefix}unknown key `{dotted}`"
        if close:
            parent_path = ".".join(loc[:-1])
            msg += f"; did you mean `{parent_path + '.' if parent_path else ''}{close[0]}`?"
        elif valid:
            msg += f"; valid keys here: {', '.join(valid)}"
        return msg
    message = err["msg"].removeprefix("Value error, ")
    if not loc:
        return f"{prefix}{message}"
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"{prefix}field `{dotted}`: {message}{shown}"


# --------------------------------------------------------------------------- public API


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    values: dict[str, Any] | None = None,
) -> T:
    """Build a `cls` config from an optional YAML file, explicit values and `--set` overrides.

    Precedence, lowest first: class defaults, the YAML file, `values` (CLI flags), `overrides`.
    """
    source = _Source(Path(path) if path is not None else None)
    data: dict[str, Any] = _read_yaml(Path(path), source) if path is not None else {}
    for key, value in (values or {}).items():
        if value is not None:
            parts = key.split(".")
            _apply_override(data, parts, value, key)
            source.overrides[tuple(parts)] = f"{key}={value!r}".replace("--set ", "")
    for text in overrides:
        parts, value = parse_override(text)
        _apply_override(data, parts, value, text)
        source.overrides[tuple(parts)] = text
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(cls, e, source) for e in exc.errors()]
        raise ConfigError(
            "invalid config:\n  " + "\n  ".join(problems),
            hint="`--print-config` shows every valid key with its default",
        ) from None


def config_to_yaml(cfg: BaseModel) -> str:
    """The fully resolved config as YAML, defaults included, in declaration order.

    Secrets (the server's API key) are written as null with a comment saying they were set, so
    the output can be reused as a config without turning the key into a row of asterisks.
    """
    data = cfg.model_dump(mode="json")
    hidden = [name for name, value in cfg if isinstance(value, SecretStr)]
    for name in hidden:
        data[name] = None
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    notes = "".join(f"# {name} is set but not shown; pass it again (e.g. through its environment variable)\n"
                     for name in hidden)
    return notes + text


def save_config(cfg: BaseModel, path: str | Path) -> None:
    Path(path).write_text(config_to_yaml(cfg), encoding="utf-8")


# =========================================================================== stage configs


class DemoDataConfig(StrictModel):
    """`tunesmith data demo`: the seeded support-ticket triage dataset."""

    out: Path = Path("examples/data/tickets")
    seed: int = 7
    train_size: int = Field(2400, ge=1, le=1_000_000)
    test_size: int = Field(300, ge=1, le=1_000_000)
    system_prompt_share: float = Field(0.35, ge=0.0, le=1.0)
    multi_turn_share: float = Field(0.12, ge=0.0, le=1.0)


class ModelConfig(StrictModel):
    """Which base model to load and how. `model: some/id` is shorthand for `model: {path: some/id}`."""

    path: str = Field("default", description="local directory, hub id, or `default` for the embedded demo model")
    revision: Optional[str] = None
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    quantization: Literal["none", "4bit", "8bit"] = "none"
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    bnb_4bit_double_quant: bool = True
    bnb_4bit_compute_dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    trust_remote_code: bool = False
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    allow_pickle: bool = Field(False, description="allow .bin/.pt pickle weights (can run arbitrary code)")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value


DataFormat = Literal["auto", "openai", "alpaca", "sharegpt", "prompt_completion", "text", "preference", "kto"]


class DedupSettings(StrictModel):
    """Duplicate removal: exact (same text ignoring case and whitespace) and near (MinHash-LSH)."""

    near: bool = Field(True, description="remove near-duplicates found with MinHash-LSH")
    threshold: float = Field(0.85, gt=0.0, lt=1.0, description="estimated Jaccard similarity that counts as near-duplicate")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations; more are more exact and slower")
    shingle_words: int = Field(3, ge=1, le=16, description="words per shingle")
    keep: bool = Field(False, description="keep copies (e.g. deliberate upsampling); they still share one split")


class SplitSettings(StrictModel):
    """Shares of the train/val/test split; they must add up to 1."""

    train: float = Field(0.9, gt=0.0, le=1.0)
    val: float = Field(0.05, ge=0.0, lt=1.0)
    test: float = Field(0.05, ge=0.0, lt=1.0)
    stratify_by: Optional[str] = Field(None, description="input field whose values keep their shares in every split")

    @model_validator(mode="after")
    def _shares_add_up(self) -> "SplitSettings":
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError(f"split shares must add up to 1, got {self.train} + {self.val} + {self.test}")
        return self


class DataChecksConfig(StrictModel):
    """What `data prepare` and `data inspect` share: reading, validation, cleaning, length."""

    inputs: list[Path] = Field(default_factory=list, description="example files (.jsonl .json .csv .parquet .txt, optionally .gz)")
    format: DataFormat = Field("auto", description="input format; auto detects it per file")
    map: dict[str, str] = Field(default_factory=dict, description="rename input fields: {yours: ours}")
    text_split: Literal["paragraph", "line", "file"] = Field("paragraph", description="documents of a .txt file")
    pii: Literal["redact", "drop", "off"] = "redact"
    dedup: DedupSettings = Field(default_factory=DedupSettings)
    max_chars: int = Field(100_000, ge=1, description="examples with more characters are rejected as too_long")
    model: Optional[ModelConfig] = Field(None, description="count tokens with this model's tokenizer and chat template")
    max_seq_len: int = Field(2048, ge=8, description="token limit, used with model")
    overlong: Literal["drop", "truncate"] = "drop"


class DataPrepareConfig(DataChecksConfig):
    """`tunesmith data prepare`: a clean, validated, split dataset with a report."""

    out: Optional[Path] = Field(None, description="output directory")
    strict: bool = Field(False, description="fail (and write nothing) if any example is rejected")
    seed: int = 0
    split: SplitSettings = Field(default_factory=SplitSettings)


class DataInspectConfig(DataChecksConfig):
    """`tunesmith data inspect`: the checks of `data prepare`, reported, with nothing written."""

    line: Optional[int] = Field(None, ge=1, description="line of the example to render; default: the first valid one")


class LoraSettings(StrictModel):
    """LoRA adapter shape. `target_modules: all-linear` adapts every linear layer but the output head."""

    r: int = Field(16, ge=1, le=1024)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: Union[Literal["all-linear"], list[str]] = "all-linear"
    use_rslora: bool = False
    use_dora: bool = False
    modules_to_save: list[str] = Field(default_factory=list)


class TrainDataSettings(StrictModel):
    """A directory written by `tunesmith data prepare`, or raw files prepared on the way."""

    path: list[Path] = Field(default_factory=lambda: [Path("examples/data/tickets/train.jsonl")])
    val_ratio: float = Field(0.05, ge=0.0, lt=1.0, description="validation share when raw files are prepared")
    mix_ratio: Optional[float] = Field(None, gt=0.0, lt=1.0, description="objective pretrain: share of trained "
                                       "tokens from the conversations in the data (the rest: the text corpus)")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, (str, Path)):
            return {"path": [value]}
        if isinstance(value, dict) and isinstance(value.get("path"), (str, Path)):
            return {**value, "path": [value["path"]]}
        return value


class TrainSettings(StrictModel):
    epochs: float = Field(1.0, gt=0)
    max_steps: Optional[int] = Field(None, ge=1, description="overrides epochs when set")
    micro_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0)
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit"] = "adamw"
    gradient_checkpointing: bool = False
    seed: int = 42
    packing: bool = True
    max_seq_len: int = Field(1024, ge=16)
    train_on_inputs: bool = False
    eval_every: Optional[int] = Field(None, ge=1, description="steps between validation passes; default: each epoch end")
    save_every: Optional[int] = Field(None, ge=1, description="steps between checkpoints; default: with each evaluation")
    log_every: int = Field(10, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    early_stopping_patience: Optional[int] = Field(None, ge=1)
    skip_nonfinite_steps: bool = Field(False, description="skip NaN/inf steps instead of stopping")
    report_to: list[Literal["none", "tensorboard", "wandb", "mlflow"]] = Field(default_factory=lambda: ["none"])
    distributed: Literal["auto", "ddp", "fsdp", "deepspeed_zero3"] = Field(
        "auto", description="with several processes: auto = what `accelerate launch` asks for, else ddp")
    fsdp_wrap: Literal["layer", "model"] = Field(
        "layer", description="fsdp: shard each decoder layer as its own unit (layer) or the model as one (model)")
    fsdp_cpu_offload: bool = Field(False, description="fsdp: keep sharded parameters, gradients and optimiser "
                                   "state in CPU memory (GPU only)")
    zero3_offload_optimizer: bool = Field(False, description="deepspeed_zero3: optimiser state in CPU memory")
    zero3_offload_params: bool = Field(False, description="deepspeed_zero3: parameters in CPU memory")


class PreferenceSettings(StrictModel):
    """dpo / orpo / simpo / kto: the losses' coefficients (docs/train.md has the formulas)."""

    beta: Optional[float] = Field(None, description="reward scale; default per objective: dpo 0.1, orpo 0.1, "
                                  "simpo 2.0, kto 0.1 (the papers' and TRL's defaults)")
    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field("sigmoid", description="dpo: the loss on the reward margin")
    simpo_gamma: float = Field(0.5, ge=0.0, description="simpo: target reward margin (TRL's simpo_gamma)")
    desirable_weight: float = Field(1.0, gt=0, description="kto: weight of the examples labelled true")
    undesirable_weight: float = Field(1.0, gt=0, description="kto: weight of the examples labelled false")


class TrainConfig(StrictModel):
    """`tunesmith train`: supervised fine-tuning or preference tuning with LoRA, QLoRA or full fine-tuning."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: TrainDataSettings = Field(default_factory=TrainDataSettings)
    method: Literal["lora", "qlora", "full"] = "lora"
    objective: Literal["sft", "dpo", "orpo", "simpo", "kto", "pretrain"] = Field(
        "sft", description="what the run optimises: sft on conversations, or a preference loss on pairs / KTO rows")
    init_from: Optional[Path] = Field(None, description="a LoRA training run to continue from (its adapter starts "
                                      "the run and, frozen, is the dpo/kto reference)")
    preference: PreferenceSettings = Field(default_factory=PreferenceSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    output_dir: Path = Path("runs/sft")

    @model_validator(mode="after")
    def _method_matches_quantization(self) -> "TrainConfig":
        if self.method == "qlora" and self.model.quantization == "none":
            self.model.quantization = "4bit"
        if self.method != "qlora" and self.model.quantization != "none":
            raise ValueError(
                f"method {self.method!r} cannot train a {self.model.quantization} base; "
                "use method: qlora to train LoRA adapters on a quantised base"
            )
        return self


# --------------------------------------------------------------------------- eval, merge, export


class GenerationSettings(StrictModel):
    """How evaluation generates: greedy by default, so two runs give the same outputs."""

    max_new_tokens: int = Field(256, ge=1, le=32768)
    batch_size: int = Field(8, ge=1)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 disables top-k filtering")
    repetition_penalty: float = Field(1.0, gt=0)
    seed: int = 0


class JudgeSettings(StrictModel):
    """An LLM judge behind any OpenAI-compatible endpoint (pairwise, both orders)."""

    url: Optional[str] = Field(None, description="base URL, e.g. http://localhost:8000/v1")
    model: Optional[str] = None
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key, if any")
    max_examples: Optional[int] = Field(None, ge=1, description="judge only the first N examples")
    timeout_s: float = Field(120.0, gt=0)

    @model_validator(mode="after")
    def _url_and_model_together(self) -> "JudgeSettings":
        if bool(self.url) != bool(self.model):
            raise ValueError("set both judge.url and judge.model (or neither)")
        return self


class EvalConfig(StrictModel):
    """`tunesmith eval`: generate on a test set and score the outputs, optionally against the base."""

    model: str = Field("runs/sft", description="training run dir, adapter dir, model dir or hub id")
    data: Path = Field(Path("examples/data/tickets/test.jsonl"),
                       description="OpenAI chat JSONL; the last assistant message is the reference")
    out: Path = Path("eval")
    base: Optional[str] = Field(None, description="base model for --compare-base (default: the run's base)")
    compare_base: bool = False
    limit: Optional[int] = Field(None, ge=1, description="evaluate only the first N examples")
    device: Optional[str] = None
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    quantization: Literal["auto", "none", "4bit", "8bit"] = Field(
        "auto", description="auto loads the base as training did (4-bit for QLoRA)")
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    json_fields: list[str] = Field(default_factory=list, description="score these fields of JSON answers")
    labels: Optional[bool] = Field(None, description="score whole answers as class labels; default: auto-detect")
    json_schema: Optional[Path] = None
    perplexity: bool = True
    regression: Optional[Path] = Field(None, description="JSONL of prompts the base handled well")
    regression_min_score: Optional[float] = Field(
        None, description="score below which a regression prompt counts as failed (default 1.0, or 50 chrF for text)")
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    lm_eval_tasks: list[str] = Field(default_factory=list, description="lm-evaluation-harness tasks (needs lm-eval)")
    lm_eval_limit: Optional[int] = Field(None, ge=1)
    preference: Optional[Path] = Field(None, description="held-out preference pairs: accuracy and margin of "
                                       "log p(chosen) - log p(rejected), base vs tuned")

    @model_validator(mode="before")
    @classmethod
    def _comma_lists(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for key in ("json_fields", "lm_eval_tasks"):
                if isinstance(value.get(key), str):
                    value = {**value, key: [p.strip() for p in value[key].split(",") if p.strip()]}
        return value


class MergeConfig(StrictModel):
    """`tunesmith merge`: fold a LoRA adapter into an unquantised copy of its base model."""

    run: str = Field("runs/sft", description="training run dir or adapter dir")
    out: Path = Path("merged")
    base: Optional[str] = Field(None, description="base model (default: the one the run recorded)")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="auto: 16-bit on GPU, fp32 on CPU")
    device: Optional[str] = None
    max_shard_size: str = "2GB"
    parity_tolerance: Optional[float] = Field(
        None, gt=0, description="largest allowed |logit difference|; default 1e-4 in fp32, 0.1 in 16-bit")


GGUF_QUANTS = ("f32", "f16", "bf16", "q8_0", "q4_0")
LLAMA_CPP_QUANTS = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k")


class ExportConfig(StrictModel):
    """`tunesmith export gguf|ollama`: a GGUF file for llama.cpp, optionally with an Ollama Modelfile."""

    source: str = Field("runs/sft", description="training run dir, adapter dir or merged model dir")
    out: Path = Field(Path("exports"), description="FILE.gguf (or a directory) for gguf; a directory for ollama")
    format: Literal["gguf", "ollama"] = "gguf"
    quant: Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l",
                   "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k"] = "f16"
    ollama: bool = Field(False, description="also write an Ollama Modelfile next to the GGUF")
    name: Optional[str] = Field(None, description="model name in the GGUF metadata and the Ollama tag")
    system_prompt: Optional[str] = Field(None, description="default system prompt for the Modelfile")
    ollama_template: Optional[Path] = Field(None, description="use this Go template instead of the derived one")
    base: Optional[str] = None
    device: Optional[str] = None
    verify: bool = True
    min_agreement: Optional[float] = Field(
        None, ge=0, le=1, description="top-1 agreement required; default 0.99 (f32/f16/bf16), 0.95 (q8_0)")
    parity: bool = Field(True, description="run `check parity` on the exported files")


class ParityConfig(StrictModel):
    """`tunesmith check parity`: do training, serving, GGUF and Ollama render the same tokens?"""

    source: str = Field("runs/sft", description="training run dir, adapter dir, model dir, or export dir")
    gguf: Optional[Path] = None
    modelfile: Optional[Path] = None
    data: Optional[Path] = Field(None, description="also check the first conversations of this JSONL")
    limit: int = Field(8, ge=1)
    system_prompt: Optional[str] = None


# --------------------------------------------------------------------------- serve

# Adapter names travel in URLs, JSON and Prometheus labels; keep them to a safe, short alphabet.
ADAPTER_NAME_PATTERN = r"[A-Za-z0-9._-]{1,64}"


class ServeConfig(StrictModel):
    """`tunesmith serve`: one base model and many LoRA adapters behind an OpenAI-compatible API."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    served_model_name: Optional[str] = Field(
        None, description="name clients pass as `model` for the base; default: the model directory's name")
    adapters: dict[str, str] = Field(
        default_factory=dict, description="adapter name -> training run directory or adapter directory")
    adapter_root: Optional[Path] = Field(
        None, description="directory that runtime-loaded adapters must live under; unset: runtime loading is off")
    host: str = Field("127.0.0.1", description="address to bind; 0.0.0.0 exposes the server to the network")
    port: int = Field(8000, ge=0, le=65535, description="0 picks a free port")
    api_key: Optional[SecretStr] = Field(
        None, description="require `Authorization: Bearer KEY` (also read from TUNESMITH_API_KEY)")
    device: Optional[str] = Field(None, description="cuda, cuda:1, cpu...; default: cuda when present")
    max_batch_size: int = Field(32, ge=1, le=4096, description="sequences decoded together in one forward pass")
    max_queue: int = Field(256, ge=1, le=1_000_000, description="waiting sequences before requests get 429")
    max_loaded_adapters: int = Field(8, ge=1, le=4096, description="adapters kept in memory (least recently used go)")
    max_lora_rank: int = Field(256, ge=1, le=65536)
    max_body_bytes: int = Field(1_048_576, ge=1024, le=1 << 31)
    max_tokens_limit: int = Field(4096, ge=1, description="largest max_tokens a request may ask for")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when a request gives none")
    max_n: int = Field(8, ge=1, le=256, description="largest `n` (choices per request)")
    allow_base_mismatch: bool = Field(
        False, description="serve adapters whose recorded base model has another name (shapes are still checked)")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @field_validator("adapters")
    @classmethod
    def _adapter_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.fullmatch(ADAPTER_NAME_PATTERN, name):
                raise ValueError(f"adapter name {name!r} must match {ADAPTER_NAME_PATTERN}")
        return value


class QuickstartConfig(StrictModel):
    """`tunesmith quickstart`: data -> train -> eval -> merge -> export -> serve on the demo task."""

    out: Path = Path("quickstart-out")
    model: ModelConfig = Field(default_factory=ModelConfig)
    overwrite: bool = Field(False, description="replace an existing output directory")
    steps: Optional[int] = Field(None, ge=1, description="training steps; default: 1 epoch, or "
                                 "default_model_steps for the embedded model")
    default_model_steps: int = Field(150, ge=1)
    learning_rate: Optional[float] = Field(None, gt=0, description="default: 5e-3 for the embedded model, else 2e-4")
    max_seq_len: int = Field(256, ge=64, description="the demo tickets fit in 256 tokens")
    eval_limit: Optional[int] = Field(120, ge=1, description="held-out examples to evaluate (None: all)")
    gguf_quant: Literal["f16", "q8_0", "q4_0"] = "q8_0"
    serve: bool = Field(True, description="start the server and ask the tuned adapter a question")
    seed: int = 42
