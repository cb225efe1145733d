"""What a model argument points at, for the stages after training (eval, merge, export, parity).

Users pass one of four things where a model is expected: a training run directory (`adapter/`
or, for full fine-tuning, `model/` inside it), a bare PEFT adapter directory, a Hugging Face
model directory (a merged model, a base model), or a hub id. `resolve_source` tells them apart
once, reads the run's manifest and config for the base model and the way it was loaded in
training, and `load_source` loads the weights and the tokenizer the same way for every stage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from tunesmith.models.config import ModelConfig
from tunesmith.errors import ConfigError, ModelError
from tunesmith.models.adapters import AdapterInfo, check_base_weights, find_adapter, is_adapter_dir, is_run_dir
from tunesmith.models.loading import resolve_model_path

Kind = Literal["adapter", "full", "model"]


@dataclass
class ModelSource:
    """A resolved model argument.

    `kind` is "adapter" (LoRA weights on top of `base`), "full" (a fully fine-tuned model from a
    run directory) or "model" (any Hugging Face model directory or hub id). `weights` is what the
    weights load from: the base model for an adapter, the model itself otherwise. `base` is the
    model the run started from, when known, for base-vs-tuned comparisons.
    """

    kind: Kind
    given: str
    weights: str
    tokenizer_path: str
    base: Optional[str] = None
    adapter: Optional[AdapterInfo] = None
    run_dir: Optional[Path] = None
    method: Optional[str] = None
    train_model_config: dict[str, Any] = field(default_factory=dict)

    @property
    def quantized_in_training(self) -> str:
        """"4bit"/"8bit" when the adapter was trained on a quantised base (QLoRA), else "none"."""
        quant = self.train_model_config.get("quantization")
        if quant in ("4bit", "8bit"):
            return quant
        return "4bit" if self.method == "qlora" else "none"

    @property
    def display_name(self) -> str:
        path = Path(self.given)
        return path.name if path.exists() else self.given

    def model_config(self, path: str, **overrides: Any) -> ModelConfig:
        """A `ModelConfig` for `path`, carrying over how training loaded the base (revision,
        trust_remote_code, attention) and then `overrides` (None values are ignored)."""
        values: dict[str, Any] = {"path": path}
        for key in ("trust_remote_code", "attn_implementation", "allow_pickle"):
            if key in self.train_model_config:
                values[key] = self.train_model_config[key]
        if self.train_model_config.get("revision") and path == self.base:
            values["revision"] = self.train_model_config["revision"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return ModelConfig.model_validate(values)
        except ValueError as exc:
            raise ConfigError(f"invalid model settings for {path}: {exc}") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None


def _train_model_config(run_dir: Path | None) -> dict[str, Any]:
    """The `model:` section of a run's config.yaml (how the base was loaded), if there is one."""
    if run_dir is None or not (run_dir / "config.yaml").is_file():
        return {}
    try:
        data = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        return {}
    model = data.get("model") if isinstance(data, dict) else None
    if isinstance(model, str):
        return {"path": model}
    return model if isinstance(model, dict) else {}


def _base_from_manifest(manifest: dict[str, Any]) -> str | None:
    base = manifest.get("base_model")
    if isinstance(base, dict):
        return base.get("path")
    return base if isinstance(base, str) else None


def resolve_source(given: str | Path, *, base: str | None = None, allow_pickle: bool = False) -> ModelSource:
    """Classify `given` and find its base model; `base` overrides the one the run recorded."""
    text = str(given)
    path = Path(text).expanduser()
    if is_run_dir(path) or is_adapter_dir(path):
        info = find_adapter(path, allow_pickle=allow_pickle)
        run_dir = info.run_dir
        base_path = resolve_model_path(base or info.base_model)
        if base is None:  # a base given explicitly is the user's call
            check_base_weights(info, base_path, hint="use the base model the adapter was trained on, or name the "
                               "base explicitly (--base) if these are the same weights saved anew")
        tokenizer_path = str(info.adapter_dir) if info.has_tokenizer else base_path
        return ModelSource(
            kind="adapter", given=text, weights=base_path, tokenizer_path=tokenizer_path, base=base_path,
            adapter=info, run_dir=run_dir, method=info.manifest.get("method") or "lora",
            train_model_config=_train_model_config(run_dir),
        )
    if path.is_dir() and (path / "model" / "config.json").is_file() and (path / "manifest.json").is_file():
        manifest = _read_json(path / "manifest.json")
        recorded = base or _base_from_manifest(manifest)
        model_dir = str((path / "model").resolve())
        return ModelSource(
            kind="full", given=text, weights=model_dir, tokenizer_path=model_dir,
            base=resolve_model_path(recorded) if recorded else None, run_dir=path,
            method=manifest.get("method") or "full", train_model_config=_train_model_config(path),
        )
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelError(
            f"{path} is not a training run, a PEFT adapter or a Hugging Face model directory",
            hint="pass the output_dir of `tunesmith train`, its adapter/ folder, a merged model "
            "directory (config.json + *.safetensors) or a hub id",
        )
    weights = resolve_model_path(text)
    manifest = _read_json(Path(weights) / "manifest.json") if (Path(weights) / "manifest.json").is_file() else {}
    recorded = base or _base_from_manifest(manifest)
    return ModelSource(
        kind="model", given=text, weights=weights, tokenizer_path=weights,
        base=resolve_model_path(recorded) if recorded else None,
    )


def load_tokenizer(source: ModelSource):
    """The tokenizer training saved (with its chat template), else the model's own."""
    from transformers import AutoTokenizer

    from tunesmith.models.loading import load_tokenizer as _load

    cfg = source.model_config(source.tokenizer_path)
    if source.adapter is not None and source.tokenizer_path == str(source.adapter.adapter_dir):
        # An adapter folder has no config.json, which the model-directory loader insists on.
        try:
            return AutoTokenizer.from_pretrained(source.tokenizer_path, trust_remote_code=cfg.trust_remote_code)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load the tokenizer saved with the adapter in {source.tokenizer_path}: {exc}",
                             hint="re-save it with tokenizer.save_pretrained(adapter_dir)") from None
    return _load(cfg)


def load_source(
    source: ModelSource,
    *,
    device: str | None = None,
    dtype: str = "auto",
    quantization: str = "auto",
    tokenizer=None,
):
    """Load `source` for inference; returns (model, tokenizer), the model in eval mode.

    An adapter loads onto its base as a `PeftModel` (so `model.disable_adapter()` gives the base
    back without a second copy in memory). `quantization="auto"` loads the base the way training
    did: a QLoRA adapter on a 4-bit base, everything else unquantised.
    """
    from tunesmith.models.loading import load_model

    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(source)
    if quantization == "auto":
        quantization = source.quantized_in_training if source.kind == "adapter" else "none"
    cfg = source.model_config(source.weights, dtype=dtype, quantization=quantization)
    model = load_model(cfg, device=device)
    if source.kind == "adapter":
        model = attach_adapter(model, tokenizer, source.adapter)
    model.eval()
    return model, tokenizer


def attach_adapter(model, tokenizer, adapter: AdapterInfo):
    """Wrap `model` with the LoRA adapter, growing its embeddings first when training added
    tokens (the adapter then carries the new rows through modules_to_save)."""
    from peft import PeftModel

    from tunesmith.chat.tokens import resize_embeddings
    from tunesmith.models.adapters import check_adapter_fits

    resize_embeddings(model, tokenizer)
    check_adapter_fits(adapter, model)
    try:
        return PeftModel.from_pretrained(model, str(adapter.adapter_dir), is_trainable=False)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ModelError(
            f"cannot load the adapter in {adapter.adapter_dir} onto {adapter.base_model}: {exc}",
            hint="make sure the adapter was trained on this base model (pass --base to choose another)",
        ) from None


__all__ = ["ModelSource", "attach_adapter", "load_source", "load_tokenizer", "resolve_source"]
