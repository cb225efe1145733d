"""Which LoRA adapters each engine can serve, checked before training and again at adapter load.

The rules, with the reason each engine has:
- vLLM: rank at most 512 and one of its rank buckets (1, 8, 16, 32, 64, 128, 256, 320, 512: its
  `--max-lora-rank` choices, MaxLoRARanks in vllm/config/lora.py); no DoRA, no `modules_to_save`,
  no bias (`bias` or `lora_bias`), no initialisation that rewrites the base weights (PiSSA, OLoRA,
  CorDA, LoftQ), no aLoRA, `layer_replication`, BD-LoRA or QALoRA: vLLM's adapter loader refuses
  them all (PEFTHelper._validate_features and validate_legal in vllm/lora/peft_helper.py), and no
  LoRA-GA init, which vLLM loads but would serve on the unchanged base; rsLoRA
  and `rank_pattern`/`alpha_pattern` are fine (vLLM applies them).
- llama.cpp: a GGUF LoRA file holds plain A/B matrix pairs and one `adapter.lora.alpha`, and
  llama.cpp scales each pair by alpha / its own rank (llama_adapter_lora_weight::get_scale in
  src/llama-adapter.h), so `rank_pattern` is served but not `alpha_pattern`, nor rsLoRA (alpha /
  sqrt(r)); no DoRA, no `modules_to_save`, no bias (`bias`, `lora_bias`: the loader takes only
  `.lora_a`/`.lora_b` tensors, src/llama-adapter.cpp), no `layer_replication` (the GGUF base keeps
  its layers), no BD-LoRA or QALoRA (not plain A/B pairs), no `target_parameters` or
  `trainable_token_indices`; and no aLoRA: llama.cpp can serve one, but only with its invocation
  tokens in the file (convert_lora_to_gguf.py writes them), which tunesmith's converter does not.
  An alpha of 0 means "no scaling" to llama.cpp (get_scale), so lora_alpha 0 is refused too.
- both: the targets must be linear layers inside the transformer blocks; an adapted embedding
  or output head (`embed_tokens`, `lm_head`) is left out here, since neither engine applies it
  to every architecture.
Rules take a PEFT `adapter_config.json` as a dict, so training (which builds that dict from its
settings) and serving (which reads it from disk) ask the same question.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from tunesmith.errors import ConfigError

Engine = Literal["vllm", "llama.cpp"]
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
NON_LINEAR_TARGETS = ("embed_tokens", "lm_head", "wte", "wpe", "embed_out", "output")
# `init_lora_weights` values whose saved adapter is a plain LoRA on the unchanged base; the other
# strings (pissa, olora, corda, loftq, lora_ga) change the base weights (peft/tuners/lora/layer.py:
# LoRA-GA subtracts scaling * B @ A from W), so the adapter is wrong on the original base. vLLM
# loads lora_ga adapters (PEFTHelper._init_is_supported) but would serve them on the unchanged base.
PLAIN_INITS = ("gaussian", "eva", "orthogonal", "mica")
# PEFT features that change what the adapter computes and that vLLM refuses to load.
VLLM_REFUSED_FEATURES = {"alora_invocation_tokens": "Activated LoRA (alora_invocation_tokens)",
                         "layer_replication": "layer_replication", "use_bdlora": "block-diagonal LoRA (use_bdlora)",
                         "use_qalora": "QALoRA (use_qalora)"}
# What llama.cpp cannot serve from the GGUF LoRA files tunesmith writes, with the reason.
LLAMACPP_REFUSED_FEATURES = {
    "alora_invocation_tokens": "Activated LoRA (alora_invocation_tokens): tunesmith's GGUF LoRA files do not carry "
                               "the invocation tokens, so llama.cpp would apply it to the whole sequence",
    "layer_replication": "layer_replication: the GGUF base model has its original layers only",
    "use_bdlora": "block-diagonal LoRA (use_bdlora) is not a plain A/B pair",
    "use_qalora": "QALoRA (use_qalora) is not a plain A/B pair",
    "target_parameters": "LoRA on parameters (target_parameters) has no GGUF LoRA form",
    "trainable_token_indices": "trainable tokens (trainable_token_indices) change the embedding, which a GGUF "
                               "LoRA file cannot hold",
    "alpha_pattern": "per-module alpha (alpha_pattern) does not fit llama.cpp's one alpha per adapter file",
}


def lora_rank(peft_config: dict[str, Any]) -> int:
    ranks = [int(peft_config.get("r") or 8), *[int(r) for r in (peft_config.get("rank_pattern") or {}).values()]]
    return max(ranks)


def vllm_rank(rank: int) -> int:
    """The smallest `--max-lora-rank` vLLM accepts that holds `rank`."""
    for bucket in VLLM_RANKS:
        if rank <= bucket:
            return bucket
    raise ValueError(f"rank {rank} is above vLLM's largest LoRA rank ({VLLM_RANKS[-1]})")


def _targets(peft_config: dict[str, Any]) -> list[str]:
    targets = peft_config.get("target_modules") or []
    if isinstance(targets, str):
        return [] if targets == "all-linear" else [targets]
    return list(targets)


def problems(engine: Engine, peft_config: dict[str, Any]) -> list[str]:
    """Why `engine` cannot serve an adapter with this config; empty when it can."""
    found: list[str] = []
    rank = lora_rank(peft_config)
    if peft_config.get("use_dora"):
        found.append(f"DoRA (use_dora) is not supported by {engine}; merge the adapter or train plain LoRA")
    if peft_config.get("modules_to_save"):
        found.append(f"modules_to_save ({', '.join(peft_config['modules_to_save'])}) is not supported by {engine}: "
                     "it serves LoRA matrices only")
    if peft_config.get("bias", "none") not in (None, "none"):
        found.append(f"LoRA bias ({peft_config['bias']}) is not supported by {engine}; use bias: none")
    bad_targets = [t for t in _targets(peft_config) if t.split(".")[-1] in NON_LINEAR_TARGETS]
    if bad_targets:
        found.append(f"target modules {', '.join(bad_targets)} (embedding/output head) are not applied by {engine}; "
                     "target the attention and MLP projections")
    if peft_config.get("lora_bias"):
        found.append(f"LoRA bias (lora_bias) is not supported by {engine}; train with lora_bias: false")
    init = peft_config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in PLAIN_INITS:
        found.append(f"init_lora_weights={init!r} changes the base model's weights, which {engine} serves unchanged; "
                     "convert the adapter to a plain LoRA (PEFT's path_initial_model_for_weight_conversion)")
    if engine == "vllm":
        if rank > VLLM_RANKS[-1]:
            found.append(f"rank {rank} is above vLLM's largest LoRA rank, {VLLM_RANKS[-1]}")
        found.extend(f"{what} is not supported by vllm" for key, what in VLLM_REFUSED_FEATURES.items()
                     if peft_config.get(key))
    else:
        if peft_config.get("use_rslora"):
            found.append("rsLoRA scaling (alpha / sqrt(r)) is not what llama.cpp applies (alpha / r); "
                         "train with use_rslora: false")
        found.extend(f"{why} (llama.cpp)" for key, why in LLAMACPP_REFUSED_FEATURES.items() if peft_config.get(key))
        if peft_config.get("lora_alpha", 8) == 0:
            found.append("lora_alpha 0 (PEFT then scales the adapter to nothing) is read by llama.cpp as "
                         "'no alpha', which applies the adapter at scale 1")
    return found


def check(engine: Optional[Engine], peft_config: dict[str, Any], *, what: str) -> None:
    """Raise a ConfigError listing every reason `engine` cannot serve `what`; None checks nothing."""
    if engine is None:
        return
    found = problems(engine, peft_config)
    if found:
        raise ConfigError(f"{what} cannot be served by {engine}: " + "; ".join(found),
                          hint=f"change these settings, or drop serve_compat: {engine} to train anyway")


def train_peft_config(lora: Any) -> dict[str, Any]:
    """The adapter_config.json fields that `tunesmith train`'s LoRA settings produce."""
    return {"r": lora.r, "lora_alpha": lora.alpha, "target_modules": lora.target_modules,
            "use_rslora": lora.use_rslora, "use_dora": lora.use_dora,
            "modules_to_save": list(lora.modules_to_save), "bias": "none"}


def check_training(cfg: Any) -> None:
    """Called at the start of `tunesmith train`: refuse settings the chosen engine cannot serve."""
    engine = getattr(cfg.train, "serve_compat", None)
    if engine is None or cfg.method == "full":
        return
    check(engine, train_peft_config(cfg.lora), what="this training's adapter")
