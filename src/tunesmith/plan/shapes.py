"""A decoder model's shape, read from its config.json only (no weights), and its parameter counts.

The planner needs layer sizes, not weights: `AutoConfig` reads a local model directory (or the
Hugging Face cache, offline). Hub models that are not on this machine are looked up in
`KNOWN_SHAPES`, the config.json values of the models the example configs name, so a plan for
`meta-llama/Llama-3.1-8B-Instruct` works before anything is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import ModelError
from tunesmith.models.logits import LOGIT_POSTPROCESSING


# config.json values (the fields the planner uses) of common bases, as their model cards publish them.
_LLAMA_3_8B = dict(model_type="llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                   num_key_value_heads=8, intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False)
_LLAMA_3_2_1B = dict(model_type="llama", hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True)
_LLAMA_3_2_3B = dict(model_type="llama", hidden_size=3072, num_hidden_layers=28, num_attention_heads=24,
                     num_key_value_heads=8, intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True)
_MISTRAL_7B_V03 = dict(model_type="mistral", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, intermediate_size=14336, vocab_size=32768, tie_word_embeddings=False)
_QWEN2_5_0_5B = dict(model_type="qwen2", hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                     num_key_value_heads=2, intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True,
                     attention_bias=True)
_QWEN2_5_1_5B = dict(model_type="qwen2", hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                     num_key_value_heads=2, intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True,
                     attention_bias=True)
_QWEN2_5_7B = dict(model_type="qwen2", hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
                   num_key_value_heads=4, intermediate_size=18944, vocab_size=152064, tie_word_embeddings=False,
                   attention_bias=True)
_SMOLLM2_135M = dict(model_type="llama", hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                     num_key_value_heads=3, intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True)
_SMOLLM2_360M = dict(model_type="llama", hidden_size=960, num_hidden_layers=32, num_attention_heads=15,
                     num_key_value_heads=5, intermediate_size=2560, vocab_size=49152, tie_word_embeddings=True)

KNOWN_SHAPES: dict[str, dict[str, Any]] = {
    "meta-llama/Llama-3.1-8B": _LLAMA_3_8B,
    "meta-llama/Llama-3.1-8B-Instruct": _LLAMA_3_8B,
    "meta-llama/Meta-Llama-3-8B-Instruct": _LLAMA_3_8B,
    "meta-llama/Llama-3.2-1B-Instruct": _LLAMA_3_2_1B,
    "meta-llama/Llama-3.2-3B-Instruct": _LLAMA_3_2_3B,
    "mistralai/Mistral-7B-Instruct-v0.3": _MISTRAL_7B_V03,
    "mistralai/Mistral-7B-v0.3": _MISTRAL_7B_V03,
    "Qwen/Qwen2.5-0.5B": _QWEN2_5_0_5B,
    "Qwen/Qwen2.5-0.5B-Instruct": _QWEN2_5_0_5B,
    "Qwen/Qwen2.5-1.5B-Instruct": _QWEN2_5_1_5B,
    "Qwen/Qwen2.5-7B-Instruct": _QWEN2_5_7B,
    "HuggingFaceTB/SmolLM2-135M": _SMOLLM2_135M,
    "HuggingFaceTB/SmolLM2-135M-Instruct": _SMOLLM2_135M,
    "HuggingFaceTB/SmolLM2-360M-Instruct": _SMOLLM2_360M,
}


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a dense decoder-only transformer (Llama, Mistral, Qwen2, Gemma, Phi-3 ...)."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    attention_bias: bool = False
    experts: int = 1            # mixture-of-experts: expert MLPs per layer
    experts_per_token: int = 1
    logits_postprocessed: bool = False  # soft-capped or scaled after the head: SFT's head is not fused

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    # ----------------------------------------------------------------- parameter counts

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder layer, by module name."""
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, self.q_width), "k_proj": (h, self.kv_width), "v_proj": (h, self.kv_width),
                "o_proj": (self.q_width, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def layer_linear_params(self) -> int:
        """Weights of one layer's linear layers (every expert's MLP counted)."""
        total = 0
        for name, (n_in, n_out) in self.linear_shapes().items():
            copies = self.experts if name in ("gate_proj", "up_proj", "down_proj") else 1
            total += n_in * n_out * copies
        if self.experts > 1:
            total += self.hidden * self.experts  # router
        return total

    @property
    def layer_other_params(self) -> int:
        """Norm weights and attention biases of one layer."""
        bias = (self.q_width + 2 * self.kv_width) if self.attention_bias else 0
        return 2 * self.hidden + bias

    @property
    def embedding_params(self) -> int:
        """Input embeddings plus the output head when it is a separate matrix."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def total_params(self) -> int:
        return (self.layers * (self.layer_linear_params + self.layer_other_params)
                + self.embedding_params + self.hidden)

    def lora_params(self, r: int, targets: list[str] | str) -> int:
        """LoRA A and B matrices for rank `r` on `targets` (`all-linear`: every linear but the head)."""
        shapes = self.linear_shapes()
        chosen = shapes if targets == "all-linear" else {k: v for k, v in shapes.items() if k in targets}
        per_layer = 0
        for name, (n_in, n_out) in chosen.items():
            copies = self.experts if name in ("gate_proj", "up_proj", "down_proj") else 1
            per_layer += r * (n_in + n_out) * copies
        return per_layer * self.layers

    def adapted_modules(self, targets: list[str] | str) -> list[str]:
        names = list(self.linear_shapes())
        return names if targets == "all-linear" else [n for n in names if n in targets]


def shape_from_config(config: Any, name: str) -> ModelShape:
    """A `ModelShape` from a transformers config object or a config.json mapping."""
    get = (lambda k, d=None: config.get(k, d)) if isinstance(config, dict) else \
        (lambda k, d=None: getattr(config, k, d))
    text = get("text_config")
    if text is not None and get("hidden_size") is None:  # multimodal wrappers keep the LM in text_config
        return shape_from_config(text, name)
    try:
        hidden = int(get("hidden_size"))
        layers = int(get("num_hidden_layers"))
        heads = int(get("num_attention_heads"))
        vocab = int(get("vocab_size"))
        intermediate = int(get("intermediate_size") or get("moe_intermediate_size") or 4 * hidden)
    except (TypeError, ValueError):
        raise ModelError(f"the config of {name} does not describe a decoder (hidden_size, num_hidden_layers, "
                         "num_attention_heads, vocab_size)",
                         hint="the planner handles decoder-only language models") from None
    kv_heads = int(get("num_key_value_heads") or heads)
    head_dim = int(get("head_dim") or hidden // heads)
    experts = int(get("num_local_experts") or get("num_experts") or 1)
    per_token = int(get("num_experts_per_tok") or 1)
    tied = get("tie_word_embeddings")
    return ModelShape(name=name, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                      intermediate=intermediate, vocab=vocab, tied_embeddings=True if tied is None else bool(tied),
                      attention_bias=bool(get("attention_bias") or get("model_type") == "qwen2"),
                      experts=experts, experts_per_token=min(per_token, experts),
                      logits_postprocessed=any(get(k) is not None for k in LOGIT_POSTPROCESSING))


def load_shape(path: str, trust_remote_code: bool = False) -> ModelShape:
    """The shape of the model at `path`: `default`, a local directory, a hub id in the local cache,
    or one of `KNOWN_SHAPES`. Nothing is downloaded."""
    from tunesmith.models.loading import resolve_model_path

    resolved = resolve_model_path(path)
    if Path(resolved).is_dir():
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(resolved, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read the config of {path}: {exc}") from None
        return shape_from_config(config, path)
    if path in KNOWN_SHAPES:
        return shape_from_config(KNOWN_SHAPES[path], path)
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        raise ModelError(
            f"the planner needs the config.json of {path}, and it is not on this machine",
            hint="point model.path at a local model directory (only config.json is read), download just the "
                 f"config (`hf download {path} config.json --local-dir DIR`), or use one of: "
                 + ", ".join(sorted(KNOWN_SHAPES)),
        ) from None
    return shape_from_config(config, path)
