"""Model loading and the embedded default model."""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_NAME = "tunesmith-demo-4m"


def default_model_path() -> Path:
    """Directory of the embedded demo model (Llama architecture, loadable with `from_pretrained`)."""
    return Path(__file__).resolve().parent / "default"


__all__ = ["DEFAULT_MODEL_NAME", "default_model_path"]
