"""The config of `tunesmith train`: the base model, the data, the method and the training settings.

`tunesmith train` takes this config as a YAML file (plus `--set`), so its fields carry no flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import Field, model_validator

from tunesmith.config import StrictModel
from tunesmith.models.config import ModelConfig


class LoraSettings(StrictModel):
    """LoRA adapter shape. `target_modules: all-linear` adapts every linear layer but the output head."""

    r: int = Field(16, ge=1, le=1024)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: Union[Literal["all-linear"], list[str]] = "all-linear"
    use_rslora: bool = False
    use_dora: bool = False
    modules_to_save: list[str] = Field(default_factory=list)


class ReplaySettings(StrictModel):
    """A share of a previous version's training data mixed into the new set, against forgetting."""

    source: Optional[str] = Field(None, description="NAME@VERSION, NAME[:ALIAS] or a training run directory whose "
                                  "recorded train.jsonl is replayed; default: init_from")
    share: float = Field(..., gt=0.0, lt=1.0, description="share of the mixed training examples taken from it")


class TrainDataSettings(StrictModel):
    """A directory written by `tunesmith data prepare`, or raw files prepared on the way."""

    path: list[Path] = Field(default_factory=lambda: [Path("examples/data/tickets/train.jsonl")])
    val_ratio: float = Field(0.05, ge=0.0, lt=1.0, description="validation share when raw files are prepared")
    mix_ratio: Optional[float] = Field(None, gt=0.0, lt=1.0, description="objective pretrain: share of trained "
                                       "tokens from the conversations in the data (the rest: the text corpus)")
    replay: Optional[ReplaySettings] = Field(None, description="mix in examples a previous version trained on")

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
    serve_compat: Optional[Literal["vllm", "llama.cpp"]] = Field(
        None, description="refuse LoRA settings this engine cannot serve, before training starts")
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
    init_from: Optional[str] = Field(None, description="a training run directory, or a registry model NAME@VERSION "
                                     "(or NAME[:ALIAS]), to continue from: its adapter (or full model), tokenizer "
                                     "and template start the run and, frozen, are the dpo reference")
    registry: Optional[Path] = Field(None, description="registry database for init_from / data.replay names; "
                                     "default: $TUNESMITH_REGISTRY, else ~/.tunesmith/registry.sqlite3")
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
