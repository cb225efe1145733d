"""`tunesmith models ...`: bring base models into a form every stage can load, and the model
registry's commands, as one command group generated from each command's (config, run) pair.

    tunesmith models import SmolLM2-135M-Instruct.Q4_1.gguf --out models/smollm2
"""

from __future__ import annotations

from tunesmith.models.config import ImportConfig
from tunesmith.registry.cli import REGISTRY_VERBS
from tunesmith.verbs import Group, Verb, say_err

MODELS = Group(
    "models", "Import base models; list, show, add and remove model versions in the registry; move their aliases.",
    [Verb("import", ImportConfig, "tunesmith.models.gguf_import:run",
          "Dequantise a GGUF model into a Hugging Face directory (safetensors, tokenizer, chat template); prints "
          "the directory.", run_kwargs=lambda: {"say": say_err}),
     *REGISTRY_VERBS])

__all__ = ["MODELS"]
