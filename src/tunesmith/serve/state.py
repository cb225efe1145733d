"""Everything one running server holds: the model, its adapters, the engine, limits and metrics."""

from __future__ import annotations

import concurrent.futures
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from tunesmith.serve.config import ServeConfig
from tunesmith.errors import ServeError, TunesmithError
from tunesmith.models import DEFAULT_MODEL_NAME
from tunesmith.models.loading import load_model, load_tokenizer, resolve_model_path
from tunesmith.serve.adapters import AdapterRegistry, Target, prepare_adapter
from tunesmith.serve.engines.base import GenerationEngine, SamplingParams
from tunesmith.serve.metrics import ServeMetrics
from tunesmith.serve.protocol import APIError, bad_request, model_not_found
from tunesmith.serve.threads import tokenize_pool

API_KEY_ENV = "TUNESMITH_API_KEY"


@dataclass
class ServeState:
    cfg: ServeConfig
    engine: GenerationEngine
    registry: Any  # AdapterRegistry for the own engine, the engine process's NameRegistry otherwise
    metrics: ServeMetrics
    base: Target
    base_aliases: frozenset[str]
    served_model: str  # the base model's resolved path or hub id, which adapters must match
    context_length: int
    vocab_size: int
    generation_config: Any
    api_key: Optional[str]
    jobs: Any = None  # tunesmith.jobs.service.JobsService when the config has a `jobs:` section
    aliases: Any = None  # tunesmith.serve.aliases.AliasRouter when the config names a `registry`
    draining: bool = False
    active_requests: int = 0
    created: float = field(default_factory=time.time)
    # Tokenisation and template rendering run here, never on the event loop.
    tokenize_pool: concurrent.futures.ThreadPoolExecutor = field(default_factory=tokenize_pool)

    # ------------------------------------------------------------------ requests

    def resolve(self, name: str, project: Optional[str] = None, user: Optional[str] = None) -> Target:
        """The base or adapter a request's `model` names; 404 for anything else."""
        if name in self.base_aliases:
            return self.base
        found = self.jobs.resolve_model(name, project) if self.jobs is not None else None
        aliases = getattr(self, "aliases", None)  # (tests call resolve on stand-ins without the field)
        if found is None and aliases is not None:  # registry aliases; `user` keeps a canary sticky
            found = aliases.resolve(name, user)
        if found is not None:
            return found
        prepared = self.registry.get(name)
        if prepared is None:  # fine-tuned models' engine names would leak other projects' job ids
            shown = [n for n in self.registry.names() if self.jobs is None or not self.jobs.hides(n)]
            raise model_not_found(name, [self.base.name, *shown])
        return prepared.target

    def sampling(self, prompts: list[list[int]], *, n: int, max_tokens: Optional[int], limit_param: str,
                 temperature: Optional[float], top_p: Optional[float], seed: Optional[int],
                 stop: list[str], ignore_eos: bool = False) -> SamplingParams:
        """Check the request against the server's bounds and the context window."""
        cfg = self.cfg
        if n > cfg.max_n:
            raise bad_request(f"n must be at most {cfg.max_n}.", param="n")
        if len(prompts) * n > min(cfg.max_queue, cfg.max_batch_size * cfg.max_n):
            raise bad_request(f"This request asks for {len(prompts) * n} completions; send fewer prompts or a "
                              "smaller n.", param="n")
        if max_tokens is not None and max_tokens > cfg.max_tokens_limit:
            raise bad_request(f"{limit_param} must be at most {cfg.max_tokens_limit}.", param=limit_param)
        longest = max(len(p) for p in prompts)
        room = self.context_length - longest
        if room < 1 or (max_tokens is not None and max_tokens > room):
            asked = f"{longest + max_tokens} tokens ({longest} in the prompt, {max_tokens} for the completion)" \
                if max_tokens is not None else f"{longest} tokens in the prompt"
            raise APIError(400, f"This model's maximum context length is {self.context_length} tokens; "
                           f"this request needs {asked}. Shorten the prompt or lower {limit_param}.",
                           param="messages" if max_tokens is None else limit_param,
                           code="context_length_exceeded")
        return SamplingParams(
            max_tokens=max_tokens if max_tokens is not None else min(cfg.default_max_tokens, room),
            temperature=1.0 if temperature is None else temperature,
            top_p=1.0 if top_p is None else top_p,
            seed=seed, stop=tuple(stop), ignore_eos=ignore_eos,
        )

    # ------------------------------------------------------------------ adapters

    def prepare(self, name: str, path: str | Path):
        prepared = prepare_adapter(name, path, base_target=self.base, served_model=self.served_model,
                                   generation_config=self.generation_config, max_rank=self.cfg.max_lora_rank,
                                   allow_base_mismatch=self.cfg.allow_base_mismatch)
        if self.cfg.engine != "own":  # the same rules `train.serve_compat` applies before training
            from tunesmith.serve.engines.compat import check

            check(self.cfg.engine, prepared.info.peft_config, what=f"adapter {name!r}")
        return prepared


def served_name(cfg: ServeConfig) -> str:
    """What clients call the base model: the configured name, the demo model's name, or the
    directory name of a local model (a hub id is used as it is, like vLLM does)."""
    if cfg.served_model_name:
        return cfg.served_model_name
    if cfg.model.path in ("default", DEFAULT_MODEL_NAME):
        return DEFAULT_MODEL_NAME
    local = Path(cfg.model.path).expanduser()
    return local.resolve().name if local.exists() else cfg.model.path


def base_target(cfg: ServeConfig, tokenizer, generation_config) -> Target:
    """The base model as clients call it; an adapter may not take its name (requests would be ambiguous)."""
    from tunesmith.chat.tokens import stop_token_ids

    name = served_name(cfg)
    clash = sorted({name, cfg.model.path} & set(cfg.adapters))
    if clash:
        raise ServeError(f"adapter name {clash[0]!r} is also the base model's name", hint="rename the adapter")
    return Target(name=name, adapter=None, tokenizer=tokenizer,
                  stop_ids=frozenset(stop_token_ids(tokenizer, generation_config)))


def context_length(model, tokenizer) -> int:
    limits = [getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    usable = [int(v) for v in limits if isinstance(v, int) and 0 < v < 10**8]
    if not usable:
        raise ServeError("cannot tell the model's context length (no max_position_embeddings in its config)")
    return min(usable)


def resolve_api_key(cfg: ServeConfig) -> Optional[str]:
    """The configured key, else $TUNESMITH_API_KEY, else None. A configured key that is empty is
    refused: it would silently turn authentication off for someone who meant to turn it on. (An
    empty environment variable counts as unset, as shells and compose files write it.)"""
    if cfg.api_key is None:
        return os.environ.get(API_KEY_ENV) or None
    key = cfg.api_key.get_secret_value()
    if not key.strip():
        raise ServeError("--api-key is empty (or only spaces), which would leave the server without authentication",
                         hint="pass a real key, or leave --api-key out to serve without one")
    return key


def create_state(cfg: ServeConfig, *, model=None, tokenizer=None) -> ServeState:
    """Load the base model (unless given) and the startup adapters, and build the engine."""
    from tunesmith.serve.engine import Engine

    api_key = resolve_api_key(cfg)
    if cfg.engine != "own":
        from tunesmith.serve.engines.factory import create_remote_state

        return create_remote_state(cfg, api_key=api_key, tokenizer=tokenizer)
    if cfg.adapter_root is not None and not cfg.adapter_root.is_dir():
        raise ServeError(f"--adapter-root {cfg.adapter_root} is not a directory")
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    served_model = resolve_model_path(cfg.model.path)
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg.model)
    if model is None:
        model = load_model(cfg.model, device=str(device))
    model.eval()
    device = next(model.parameters()).device
    generation_config = getattr(model, "generation_config", None)
    base = base_target(cfg, tokenizer, generation_config)
    metrics = ServeMetrics()
    registry = AdapterRegistry(model, max_loaded=cfg.max_loaded_adapters)
    state = ServeState(
        cfg=cfg, engine=Engine(registry, device=device, max_batch_size=cfg.max_batch_size,
                               max_queue=cfg.max_queue, metrics=metrics),
        registry=registry, metrics=metrics, base=base,
        base_aliases=frozenset({base.name, cfg.model.path}), served_model=served_model,
        context_length=context_length(model, tokenizer), vocab_size=len(tokenizer),
        generation_config=generation_config, api_key=api_key,
    )
    for adapter_name, path in cfg.adapters.items():
        try:
            # The engine thread is not running yet, so the registry can be changed from here.
            registry.add(state.prepare(adapter_name, path))
        except TunesmithError as exc:
            raise ServeError(f"adapter {adapter_name!r} ({path}): {exc.message}", hint=exc.hint) from None
    metrics.loaded_adapters.set(len(registry.loaded_names()))
    return state
