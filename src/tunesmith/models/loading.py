"""Load a base model and its tokenizer safely, the same way for every stage.

Safe by default: weights load from safetensors only (pickle-based `.bin`/`.pt` files can run
arbitrary code when unpickled, so they are refused unless `allow_pickle` is set), and
`trust_remote_code` stays off unless the user turns it on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from tunesmith.models.config import ModelConfig
from tunesmith.errors import ModelError
from tunesmith.models import DEFAULT_MODEL_NAME, default_model_path

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_model_path(path: str) -> str:
    """`default` (or the demo model's name) -> the embedded model; a directory -> itself; a `.gguf`
    file -> its dequantised import (models/gguf_import.py, cached); else a hub id."""
    if path in ("default", DEFAULT_MODEL_NAME):
        return str(default_model_path())
    local = Path(path).expanduser()
    if local.is_file() and local.suffix.lower() == ".gguf":
        from tunesmith.models.gguf_import import resolve_gguf

        return resolve_gguf(local)
    if local.exists():
        if not local.is_dir():
            raise ModelError(f"model path {path} is a file, not a model directory",
                             hint="point at the directory that holds config.json and the weights")
        if not (local / "config.json").is_file():
            raise ModelError(f"{path} has no config.json, so it is not a Hugging Face model directory",
                             hint="for a training run directory, pass its `adapter/` or merge it first")
        return str(local.resolve())
    if path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise ModelError(f"model directory not found: {path}")
    return path


def check_weights_are_safe(path: str, allow_pickle: bool) -> None:
    """Refuse a local model whose only weights are pickle files, unless the user opted in."""
    local = Path(path)
    if not local.is_dir():
        return  # hub ids are loaded with use_safetensors=True instead
    safetensors = list(local.glob("*.safetensors"))
    pickles = [p for p in local.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if not safetensors and pickles and not allow_pickle:
        raise ModelError(
            f"{path} holds only pickle weights ({', '.join(sorted(p.name for p in pickles))}); "
            "loading pickle files can execute arbitrary code",
            hint="convert the weights to safetensors, or set model.allow_pickle: true if you trust the source",
        )
    if not safetensors and not pickles:
        raise ModelError(f"{path} has no weight files (*.safetensors)")


def resolve_dtype(dtype: str, device: str | None = None) -> torch.dtype:
    """`auto` is bf16 on a GPU that supports it, fp16 on an older GPU, fp32 on CPU."""
    if dtype != "auto":
        return _DTYPES[dtype]
    on_gpu = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if on_gpu:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _hub_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.revision:
        kwargs["revision"] = cfg.revision
    return kwargs


def _wrap_os_error(exc: Exception, path: str) -> ModelError:
    return ModelError(
        f"cannot load {path}: {exc}",
        hint="use a local model directory, or make sure the hub id is right and the hub is reachable "
        "(offline machines need the model downloaded beforehand)",
    )


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    path = resolve_model_path(cfg.path)
    try:
        return AutoTokenizer.from_pretrained(path, **_hub_kwargs(cfg))
    except (OSError, ValueError) as exc:
        raise _wrap_os_error(exc, path) from None


def quantization_config(cfg: ModelConfig):
    """The bitsandbytes config for 4-bit (NF4, double quantisation) or 8-bit loading, else None."""
    if cfg.quantization == "none":
        return None
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise ModelError(
            f"{cfg.quantization} quantisation needs bitsandbytes",
            hint="pip install 'tunesmith[qlora]'",
        ) from None
    if cfg.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=cfg.bnb_4bit_double_quant,
        bnb_4bit_compute_dtype=resolve_dtype(cfg.bnb_4bit_compute_dtype),
    )


def load_model(cfg: ModelConfig, *, device: str | None = None, compute_device: str | None = None):
    """Load the causal LM described by `cfg` onto `device` (default: cuda if present, else cpu).

    `compute_device` is where the model will run when that differs from where it loads (sharded
    training loads on CPU and shards onto GPUs); `dtype: auto` is resolved for it.
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(cfg.path)
    check_weights_are_safe(path, cfg.allow_pickle)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kwargs = _hub_kwargs(cfg)
    kwargs["dtype"] = resolve_dtype(cfg.dtype, compute_device or device)
    if not cfg.allow_pickle:
        kwargs["use_safetensors"] = True
    if cfg.attn_implementation != "auto":
        kwargs["attn_implementation"] = cfg.attn_implementation
    quant = quantization_config(cfg)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise _wrap_os_error(exc, path) from None
    if quant is None:
        model.to(device)
    return model


def _loaded_weight_files(local: Path) -> list[Path]:
    """The safetensors files transformers loads: the shards the index names, else all of them
    (files such as Mistral's `consolidated.safetensors` beside an index are not loaded)."""
    index = local / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
            return sorted(local / n for n in names)
        except (OSError, ValueError, KeyError, AttributeError):
            pass
    return sorted(local.glob("*.safetensors"))


def weights_stamp(path: str) -> list[list[Any]] | None:
    """[name, size, mtime_ns] of each weight file: unchanged stamps mean unchanged files, so a
    later stage on the same machine can skip re-hashing a large base."""
    local = Path(path)
    if not local.is_dir():
        return None
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in _loaded_weight_files(local)]


def weights_fingerprint(path: str) -> str | None:
    """SHA-256 over a local model's safetensors files (name and content), for manifests."""
    local = Path(path)
    if not local.is_dir():
        return None
    digest = hashlib.sha256()
    for file in _loaded_weight_files(local):
        digest.update(file.name.encode())
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
