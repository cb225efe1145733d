"""Wrapping the base model for the configured method: LoRA / QLoRA adapters or full fine-tuning."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from tunesmith.train.config import LoraSettings, TrainConfig, TrainSettings
from tunesmith.errors import TrainingError
from tunesmith.train.cpu_attention import use_grouped_attention_on_cpu
from tunesmith.train.dropout import use_cheap_dropout
from tunesmith.train.lean_lora import use_lean_lora
from tunesmith.train.lean_mlp import use_lean_mlp
from tunesmith.train.lean_norm import use_lean_norm


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit packed weights count their real element number."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def apply_method(model, cfg: TrainConfig, extra_modules_to_save: Iterable[str] = (), tied_embeddings: bool = False,
                 device: str = "cpu"):
    """Wrap the base model for the configured method: LoRA / QLoRA adapters, or full fine-tuning."""
    settings: TrainSettings = cfg.train
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        if device.startswith("cpu"):
            use_grouped_attention_on_cpu()
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.method == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=settings.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif settings.gradient_checkpointing:
        model.enable_input_require_grads()
    lora: LoraSettings = cfg.lora
    modules_to_save = sorted(set(lora.modules_to_save) | set(extra_modules_to_save)) or None
    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        use_rslora=lora.use_rslora,
        use_dora=lora.use_dora,
        modules_to_save=modules_to_save,
        bias="none",
        task_type="CAUSAL_LM",
        # New token rows trained through modules_to_save must stay shared between the tied
        # input and output embeddings, or the saved adapter unties them.
        ensure_weight_tying=bool(tied_embeddings and modules_to_save),
    )
    try:
        model = get_peft_model(model, peft_config)
    except ValueError as exc:
        raise TrainingError(f"cannot attach LoRA adapters: {exc}",
                            hint="check lora.target_modules against the model's module names") from None
    if device.startswith("cpu"):
        use_lean_cpu_layers(model)
    return model


def use_lean_cpu_layers(model) -> None:
    """The CPU forms of a LoRA model's layers: cheaper dropout masks, a LoRA branch and gated MLP
    that keep less for the backward pass, RMSNorm with a closed-form backward, grouped-query
    attention without repeated keys. On GPUs PEFT's fused dropout is already cheap and the rest is
    untested, so they are CPU-only."""
    use_cheap_dropout(model)
    use_lean_lora(model)
    use_lean_mlp(model)
    use_lean_norm(model)
    use_grouped_attention_on_cpu()


def load_adapter_for_training(model, cfg: TrainConfig, run_dir: Path, device: str = "cpu"):
    """Continue training the LoRA adapter of an earlier run (`init_from: RUN_DIR`)."""
    from peft import PeftModel

    adapter = run_dir / "adapter" if (run_dir / "adapter").is_dir() else run_dir
    if not (adapter / "adapter_config.json").is_file():
        raise TrainingError(f"init_from: {run_dir} holds no LoRA adapter (adapter/adapter_config.json)",
                            hint="point init_from at a LoRA training run directory (method: lora or qlora)")
    if cfg.method == "full":
        raise TrainingError("init_from continues a LoRA adapter; method: full has none to continue",
                            hint="use method: lora, or merge the adapter first and train the merged model")
    settings: TrainSettings = cfg.train
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        model.enable_input_require_grads()
    model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    if device.startswith("cpu"):
        use_lean_cpu_layers(model)
    return model
