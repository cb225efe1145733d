"""The config of `tunesmith eval`, with its command-line flags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import Field, model_validator

from tunesmith.config import Flag, StrictModel
from tunesmith.models.config import Dtype


class GenerationSettings(StrictModel):
    """How evaluation generates: greedy by default, so two runs give the same outputs."""

    max_new_tokens: Annotated[int, Flag("--max-new-tokens")] = Field(
        256, ge=1, le=32768, description="generation length limit")
    batch_size: Annotated[int, Flag("--batch-size")] = Field(8, ge=1, description="prompts generated together")
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 disables top-k filtering")
    repetition_penalty: float = Field(1.0, gt=0)
    seed: int = 0


class JudgeSettings(StrictModel):
    """An LLM judge behind any OpenAI-compatible endpoint (pairwise, both orders)."""

    url: Annotated[Optional[str], Flag("--judge-url")] = Field(
        None, description="OpenAI-compatible base URL of an LLM judge, e.g. http://localhost:8000/v1")
    model: Annotated[Optional[str], Flag("--judge-model")] = Field(None, description="model name to ask at the judge URL")
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

    model: Annotated[str, Flag("--model", "-m")] = Field(
        "runs/sft", description="training run dir, adapter dir, model dir or hub id")
    data: Annotated[Path, Flag("--data", "-d")] = Field(
        Path("examples/data/tickets/test.jsonl"),
        description="test set: OpenAI chat JSONL; the last assistant message is the reference")
    out: Annotated[Path, Flag("--out", "-o")] = Field(
        Path("eval"), description="directory for metrics.json, samples.jsonl, report.md/html and charts")
    base: Annotated[Optional[str], Flag("--base")] = Field(
        None, description="base model to compare with (default: the run's base)")
    compare_base: Annotated[bool, Flag()] = Field(False, description="also evaluate the base model and compare")
    limit: Annotated[Optional[int], Flag("--limit")] = Field(None, ge=1, description="evaluate only the first N examples")
    device: Optional[str] = None
    dtype: Dtype = "auto"
    quantization: Literal["auto", "none", "4bit", "8bit"] = Field(
        "auto", description="auto loads the base as training did (4-bit for QLoRA)")
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    json_fields: Annotated[list[str], Flag("--json-fields")] = Field(
        default_factory=list, description="score these fields of JSON answers, e.g. category,priority")
    labels: Annotated[Optional[bool], Flag()] = Field(
        None, description="score whole answers as class labels; default: auto-detect")
    json_schema: Annotated[Optional[Path], Flag("--json-schema")] = Field(
        None, description="JSON Schema the answers must satisfy")
    perplexity: bool = True
    regression: Annotated[Optional[Path], Flag("--regression")] = Field(
        None, description="JSONL of prompts the base handled well")
    regression_min_score: Optional[float] = Field(
        None, description="score below which a regression prompt counts as failed (default 1.0, or 50 chrF for text)")
    forgetting: Annotated[Optional[str], Flag("--forgetting")] = Field(
        None, description="previous version (NAME@VERSION, NAME or a run dir): score it and this model side by "
                          "side on its eval set and the regression set")
    forgetting_data: Annotated[Optional[Path], Flag("--forgetting-data")] = Field(
        None, description="the previous version's eval set (default: the test split beside the data its run "
                          "trained on, else its validation file)")
    registry: Annotated[Optional[Path], Flag("--registry")] = Field(
        None, description="registry database for --forgetting names (default: $TUNESMITH_REGISTRY, else "
                          "~/.tunesmith/registry.sqlite3)")
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    lm_eval_tasks: Annotated[list[str], Flag("--lm-eval")] = Field(
        default_factory=list, description="lm-evaluation-harness tasks, comma-separated (needs lm-eval)")
    lm_eval_limit: Optional[int] = Field(None, ge=1)
    preference: Annotated[Optional[Path], Flag("--preference")] = Field(
        None, description="held-out preference pairs: accuracy and margin of log p(chosen) - log p(rejected), "
                          "base vs tuned")

    @model_validator(mode="before")
    @classmethod
    def _comma_lists(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for key in ("json_fields", "lm_eval_tasks"):
                if isinstance(value.get(key), str):
                    value = {**value, key: [p.strip() for p in value[key].split(",") if p.strip()]}
        return value
