"""The server state for an engine that runs as another process (llama.cpp, vLLM).

tunesmith still loads the tokenizer (prompts are rendered and tokenised here, the same way for
every engine) and the model's config (context length, GGUF tensor names), but not the weights:
the engine process holds those.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Optional

from tunesmith.errors import ServeError, TunesmithError
from tunesmith.serve.config import ServeConfig
from tunesmith.serve.metrics import ServeMetrics


def create_remote_state(cfg: ServeConfig, *, api_key: Optional[str], tokenizer=None):
    from transformers import AutoConfig, GenerationConfig

    from tunesmith.models.loading import load_tokenizer, resolve_model_path
    from tunesmith.serve.engines.llamacpp import LlamaCppEngine
    from tunesmith.serve.engines.remote import NameRegistry
    from tunesmith.serve.engines.vllm import VLLMEngine
    from tunesmith.serve.state import ServeState, base_target, context_length

    if cfg.adapter_root is not None and not cfg.adapter_root.is_dir():
        raise ServeError(f"--adapter-root {cfg.adapter_root} is not a directory")
    served_model = resolve_model_path(cfg.model.path)
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg.model)
    model_config = AutoConfig.from_pretrained(served_model, trust_remote_code=cfg.model.trust_remote_code)
    try:
        generation_config = GenerationConfig.from_pretrained(served_model)
    except OSError:
        generation_config = None
    base = base_target(cfg, tokenizer, generation_config)
    window = context_length(SimpleNamespace(config=model_config), tokenizer)
    metrics, registry = ServeMetrics(), NameRegistry()
    if cfg.engine == "vllm":
        engine = VLLMEngine(cfg, registry, base_name=base.name, metrics=metrics, model_path=served_model,
                            context_length=window)
    else:
        engine = LlamaCppEngine(cfg, registry, base_name=base.name, metrics=metrics, base_config=model_config,
                                context_length=window)
    state = ServeState(
        cfg=cfg, engine=engine, registry=registry, metrics=metrics, base=base,
        base_aliases=frozenset({base.name, cfg.model.path}), served_model=served_model, context_length=window,
        vocab_size=len(tokenizer), generation_config=generation_config, api_key=api_key,
    )
    for adapter_name, path in cfg.adapters.items():
        try:
            registry.add(state.prepare(adapter_name, Path(path)))
        except TunesmithError as exc:
            raise ServeError(f"adapter {adapter_name!r} ({path}): {exc.message}", hint=exc.hint) from None
    metrics.loaded_adapters.set(len(registry.names()))
    return state
