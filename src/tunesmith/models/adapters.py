"""LoRA adapters and training-run directories, as every later stage sees them.

A training run directory (what `tunesmith train` writes) holds `adapter/` — a PEFT adapter in
safetensors with the tokenizer and chat template saved beside it — plus `manifest.json` and
`config.yaml`. Later stages accept either the run directory or the adapter directory itself;
`find_adapter` resolves both and validates what it finds before anything is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from tunesmith.errors import ModelError
from tunesmith.models.loading import PICKLE_SUFFIXES, weights_fingerprint, weights_stamp

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
SUPPORTED_PEFT_TYPES = ("LORA",)


@dataclass
class AdapterInfo:
    """A validated adapter on disk."""

    adapter_dir: Path
    run_dir: Path | None
    base_model: str
    peft_config: dict[str, Any]
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return int(self.peft_config.get("r", 0))

    @property
    def target_modules(self) -> list[str]:
        targets = self.peft_config.get("target_modules") or []
        return [targets] if isinstance(targets, str) else list(targets)

    @property
    def has_tokenizer(self) -> bool:
        return (self.adapter_dir / "tokenizer_config.json").is_file()


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def is_run_dir(path: str | Path) -> bool:
    return is_adapter_dir(Path(path) / "adapter")


def find_adapter(path: str | Path, *, allow_pickle: bool = False) -> AdapterInfo:
    """Validate a run directory or adapter directory and describe the adapter in it."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelError(f"adapter not found: {path}")
    run_dir: Path | None = None
    if is_run_dir(path):
        run_dir, adapter_dir = path, path / "adapter"
    elif is_adapter_dir(path):
        adapter_dir = path
        if (path.parent / "manifest.json").is_file() and path.name == "adapter":
            run_dir = path.parent
    else:
        raise ModelError(
            f"{path} is neither a training run directory nor a PEFT adapter directory "
            f"(no {ADAPTER_CONFIG} in it or in its adapter/ folder)",
            hint="pass the output_dir of `tunesmith train`, or the folder holding adapter_config.json",
        )
    peft_config = _read_json_object(adapter_dir / ADAPTER_CONFIG)
    peft_type = str(peft_config.get("peft_type", "")).upper()
    if peft_type not in SUPPORTED_PEFT_TYPES:
        raise ModelError(
            f"{adapter_dir} is a {peft_type or 'unknown'} adapter; tunesmith supports LoRA adapters",
        )
    if not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        pickles = [p.name for p in adapter_dir.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles and not allow_pickle:
            raise ModelError(
                f"{adapter_dir} holds pickle weights ({', '.join(sorted(pickles))}) and no {ADAPTER_WEIGHTS}; "
                "loading pickle files can execute arbitrary code",
                hint="re-save the adapter with safetensors (PEFT's default), or opt in with allow_pickle",
            )
        if not pickles:
            raise ModelError(f"{adapter_dir} has no {ADAPTER_WEIGHTS}")
    manifest: dict[str, Any] = {}
    if run_dir is not None and (run_dir / "manifest.json").is_file():
        manifest = _read_json_object(run_dir / "manifest.json")
    recorded_base = manifest.get("base_model") or {}
    if not isinstance(recorded_base, dict):
        raise ModelError(f"{run_dir / 'manifest.json'}: base_model is not an object")
    base = recorded_base.get("path") or peft_config.get("base_model_name_or_path")
    if not base:
        raise ModelError(f"{adapter_dir} does not say which base model it was trained on",
                         hint="set base_model_name_or_path in adapter_config.json")
    return AdapterInfo(adapter_dir=adapter_dir, run_dir=run_dir, base_model=str(base),
                       peft_config=peft_config, manifest=manifest)


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelError(f"cannot read {path}: {exc}", hint="the file is damaged; save the adapter again") from None
    if not isinstance(value, dict):
        raise ModelError(f"{path} does not hold a JSON object", hint="the file is damaged; save the adapter again")
    return value


def check_base_weights(info: AdapterInfo, base_path: str, *, hint: str) -> None:
    """Refuse an adapter whose training run recorded other base weights than those at `base_path`.

    The run's manifest keeps the SHA-256 of the base's safetensors; a base directory that was
    re-downloaded at another revision or overwritten under the same name would otherwise load
    without complaint and give an adapter the wrong weights to sit on.
    """
    base = info.manifest.get("base_model") or {}
    recorded = base.get("weights_sha256")
    if not recorded:
        return
    stamp = weights_stamp(base_path)
    if stamp is not None and stamp == base.get("weights_stamp"):
        return  # the very files training hashed, untouched since: no need to read them again
    found = _fingerprint(base_path, stamp)
    if found is None or found == recorded:
        return
    raise ModelError(
        f"adapter {info.adapter_dir} was trained on other weights than the base model now at {base_path} "
        f"(recorded sha256 {recorded[:12]}…, found {found[:12]}…)",
        hint=hint,
    )


def _fingerprint(base_path: str, stamp: list | None) -> str | None:
    if stamp is None:
        return None
    return _fingerprint_cached(str(Path(base_path).resolve()), tuple(tuple(f) for f in stamp))


@lru_cache(maxsize=8)
def _fingerprint_cached(path: str, stamp: tuple) -> str | None:
    return weights_fingerprint(path)


def check_adapter_fits(info: AdapterInfo, model) -> None:
    """Refuse an adapter whose target modules or shapes do not exist in `model`."""
    from safetensors import safe_open

    weights = info.adapter_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        return
    module_shapes = {name: module for name, module in model.named_modules()}
    with safe_open(str(weights), framework="pt") as fh:
        for key in fh.keys():
            if ".lora_A" not in key and ".lora_B" not in key:
                continue
            module_path = key.split(".lora_")[0]
            candidates = [n for n in module_shapes if n.endswith(module_path.removeprefix("base_model.model."))]
            if not candidates:
                raise ModelError(
                    f"adapter {info.adapter_dir} targets {module_path}, which the base model does not have",
                    hint=f"the adapter was trained on {info.base_model}; serve it with that base model",
                )
            layer = module_shapes[candidates[0]]
            shape = fh.get_slice(key).get_shape()
            in_f = getattr(layer, "in_features", None)
            out_f = getattr(layer, "out_features", None)
            if ".lora_A" in key and in_f is not None and shape[1] != in_f:
                raise ModelError(f"adapter {info.adapter_dir}: {key} expects {shape[1]} inputs, "
                                 f"base layer has {in_f}", hint=f"it was trained on {info.base_model}")
            if ".lora_B" in key and out_f is not None and shape[0] != out_f:
                raise ModelError(f"adapter {info.adapter_dir}: {key} has {shape[0]} outputs, "
                                 f"base layer has {out_f}", hint=f"it was trained on {info.base_model}")
