"""Write a Hugging Face model (Llama, Mistral, Qwen2) as a GGUF file with the `gguf` library.

The metadata keys, tensor names (`gguf.get_tensor_name_map`), value types and quantisation
kernels (`gguf.quants`: bf16, q8_0, q4_0) all come from `gguf`, the package llama.cpp publishes.
What is written here is only the part no library offers for an in-memory transformers model:
reading the hyper-parameters and the tokenizer out of it, and the one layout change llama.cpp
needs — Llama-family q/k projections are stored with their rotary halves interleaved, because
llama.cpp's `llama` architecture rotates adjacent pairs where transformers rotates halves
(Qwen2 uses the half layout natively, so it is written unchanged).

K-quants (q4_k_m and friends) need llama.cpp's own quantiser; they are offered through
llama-cpp-python's `llama_model_quantize` when that optional package is installed.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tunesmith.errors import ExportError

# HF architecture -> (GGUF architecture, whether q/k rows are interleaved for llama.cpp's rope).
ARCHITECTURES: dict[str, tuple[str, bool]] = {
    "LlamaForCausalLM": ("llama", True),
    "MistralForCausalLM": ("llama", True),  # llama.cpp runs Mistral as the llama architecture
    "Qwen2ForCausalLM": ("qwen2", False),
}
NATIVE_QUANTS = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q4_0": "Q4_0"}
FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0",
              "q4_0": "MOSTLY_Q4_0"}
LLAMA_CPP_FTYPES = {"q2_k": "Q2_K", "q3_k_s": "Q3_K_S", "q3_k_m": "Q3_K_M", "q3_k_l": "Q3_K_L",
                    "q4_k_s": "Q4_K_S", "q4_k_m": "Q4_K_M", "q5_k_s": "Q5_K_S", "q5_k_m": "Q5_K_M", "q6_k": "Q6_K"}
# Preferred llama.cpp names for pre-tokenizer regexes that several names share.
_PREFERRED_PRE = ("llama-bpe", "qwen2", "tekken", "gpt-4o")


@dataclass
class TokenizerMetadata:
    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece-style BPE with byte fallback)
    pre: str
    tokens: list[str]
    types: list[int]
    merges: list[str]
    scores: list[float] | None = None
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, eot, unk, pad
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool | None = None
    chat_template: str | None = None


@dataclass
class GGUFPlan:
    """What a written file must contain; the verifier reads the file back against it."""

    path: Path
    arch: str
    quant: str
    metadata: dict[str, Any]
    tensors: dict[str, tuple[tuple[int, ...], str | None]]  # name -> (numpy shape, GGML type or None)
    tokenizer: TokenizerMetadata


def llama_cpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- tokenizer


def _tokenizer_json(tokenizer) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportError("GGUF export needs a fast (tokenizers) tokenizer with a tokenizer.json",
                          hint="save the tokenizer with transformers' AutoTokenizer (use_fast=True)")
    return json.loads(backend.to_str())


def _pre_tokenizer_name(data: dict[str, Any]) -> str:
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    pre = data.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"  # llama.cpp's name for the GPT-2 split regex
    if pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers", [])
        splits = [p for p in parts if p.get("type") == "Split"]
        rest = [p for p in parts if p.get("type") != "Split"]
        if len(splits) == 1 and all(p.get("type") == "ByteLevel" and not p.get("use_regex", True) for p in rest):
            pattern = (splits[0].get("pattern") or {}).get("Regex")
            names = [n for n in _PREFERRED_PRE if GGUF_PRE_TOKENIZER_SPLITS.get(n) == pattern]
            names += [n for n, regex in GGUF_PRE_TOKENIZER_SPLITS.items() if regex == pattern]
            if names:
                return names[0]
    raise ExportError(
        "the tokenizer's pre-tokenizer is not one llama.cpp knows, so llama.cpp would split text differently "
        f"({json.dumps(pre)[:200]})",
        hint="GGUF export supports the GPT-2, Llama 3, Qwen2, Tekken and GPT-4o byte-level pre-tokenizers "
        "and SentencePiece-style tokenizers",
    )


def _merges(model: dict[str, Any]) -> list[str]:
    merges = model.get("merges") or []
    # llama.cpp separates a merge's two parts with a space; a space inside a part is written as
    # U+0120 + 256 the way its converter does, so the pair stays unambiguous.
    return [m if isinstance(m, str) else " ".join(p.replace(" ", chr(ord(" ") + 256)) for p in m) for m in merges]


def tokenizer_metadata(tokenizer, vocab_size: int) -> TokenizerMetadata:
    """Token list, types, merges, special ids and flags for `tokenizer.ggml.*`."""
    from tunesmith.chat.tokens import end_of_turn_token

    data = _tokenizer_json(tokenizer)
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise ExportError(f"GGUF export supports BPE tokenizers; this one is {model.get('type')!r}",
                          hint="Llama, Mistral and Qwen2 tokenizers are BPE")
    spm = bool(model.get("byte_fallback"))
    added = {t["id"]: t for t in data.get("added_tokens", [])}
    by_id = {i: t for t, i in model.get("vocab", {}).items()}
    size = max(vocab_size, len(tokenizer))
    if len(tokenizer) > vocab_size:
        raise ExportError(f"the tokenizer has {len(tokenizer)} tokens but the model's embeddings have {vocab_size} rows",
                          hint="the adapter and tokenizer do not belong to this base model")
    tokens, types = [], []
    for i in range(size):
        text = added[i]["content"] if i in added else by_id.get(i)
        if text is not None and spm and len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            tokens.append(text)
            types.append(6)  # BYTE: llama.cpp's byte fallback looks these up by type
        elif i in added:
            tokens.append(text)
            types.append(3 if added[i].get("special") else 4)  # CONTROL / USER_DEFINED
        elif text is not None:
            tokens.append(text)
            types.append(2 if text == model.get("unk_token") else 1)  # UNKNOWN / NORMAL
        else:  # embedding rows past the tokenizer (padded vocabularies): never produced
            tokens.append(f"[PAD{i}]")
            types.append(5)  # UNUSED
    merges = _merges(model)
    scores = None
    if spm:
        # llama.cpp's SentencePiece tokenizer merges the adjacent pair whose result scores highest;
        # scoring each token by minus the rank of the merge that makes it reproduces BPE exactly.
        rank = {m.replace(" ", "", 1): -float(r) for r, m in enumerate(merges)}
        scores = [rank.get(t, 0.0) for t in tokens]
    special: dict[str, int] = {}
    for name in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None:
            special[name] = int(token_id)
    eot = end_of_turn_token(tokenizer) if getattr(tokenizer, "chat_template", None) else None
    if eot is not None and tokenizer.convert_tokens_to_ids(eot) != special.get("eos"):
        special["eot"] = int(tokenizer.convert_tokens_to_ids(eot))
    plain = tokenizer("a")["input_ids"]
    add_space_prefix = None
    if spm:
        pre = data.get("pre_tokenizer") or {}
        metaspace = [p for p in ([pre] + pre.get("pretokenizers", [])) if p.get("type") == "Metaspace"]
        normalizer = json.dumps(data.get("normalizer") or {})
        add_space_prefix = (bool(metaspace) and metaspace[0].get("prepend_scheme", "always") != "never") \
            or '"Prepend"' in normalizer
    template = getattr(tokenizer, "chat_template", None)
    return TokenizerMetadata(
        model="llama" if spm else "gpt2",
        pre="default" if spm else _pre_tokenizer_name(data),
        tokens=tokens, types=types, merges=merges, scores=scores, special_ids=special,
        add_bos="bos" in special and plain[:1] == [special["bos"]],
        add_eos="eos" in special and plain[-1:] == [special["eos"]],
        add_space_prefix=add_space_prefix,
        chat_template=template if isinstance(template, str) else None,
    )


# --------------------------------------------------------------------------- hyper-parameters


def _rope(config) -> dict[str, Any]:
    params = dict(getattr(config, "rope_parameters", None) or {})
    if not params:  # transformers 4.x spelling
        params = dict(getattr(config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params.setdefault("rope_type", params.get("type", "default"))
    return params


def llama3_rope_factors(params: dict[str, Any], head_dim: int) -> np.ndarray:
    """Per-frequency divisors for Llama 3.1-style rope scaling (the `rope_freqs` tensor)."""
    base, factor = float(params["rope_theta"]), float(params["factor"])
    low, high = float(params.get("low_freq_factor", 1.0)), float(params.get("high_freq_factor", 4.0))
    original = float(params.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    factors = []
    for freq in freqs:
        wavelength = 2 * math.pi / freq
        if wavelength < original / high:
            factors.append(1.0)
        elif wavelength > original / low:
            factors.append(factor)
        else:
            smooth = (original / wavelength - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def hyper_parameters(config) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """`{arch}.*` metadata (as writer-method -> value) and extra tensors (rope_freqs)."""
    import gguf

    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    values: dict[str, Any] = {
        "add_context_length": config.max_position_embeddings,
        "add_embedding_length": config.hidden_size,
        "add_block_count": config.num_hidden_layers,
        "add_feed_forward_length": config.intermediate_size,
        "add_head_count": heads,
        "add_head_count_kv": getattr(config, "num_key_value_heads", None) or heads,
        "add_rope_dimension_count": head_dim,
        "add_layer_norm_rms_eps": float(config.rms_norm_eps),
        "add_vocab_size": config.vocab_size,
    }
    if head_dim * heads != config.hidden_size:
        values["add_key_length"] = head_dim
        values["add_value_length"] = head_dim
    rope = _rope(config)
    values["add_rope_freq_base"] = float(rope["rope_theta"])
    extra: dict[str, np.ndarray] = {}
    kind = rope["rope_type"]
    if kind == "linear":
        values["add_rope_scaling_type"] = gguf.RopeScalingType.LINEAR
        values["add_rope_scaling_factor"] = float(rope["factor"])
    elif kind == "yarn":
        values["add_rope_scaling_type"] = gguf.RopeScalingType.YARN
        values["add_rope_scaling_factor"] = float(rope["factor"])
        values["add_rope_scaling_orig_ctx_len"] = int(rope.get("original_max_position_embeddings",
                                                               config.max_position_embeddings))
    elif kind == "llama3":
        extra["rope_freqs.weight"] = llama3_rope_factors(rope, head_dim)
    elif kind not in (None, "default"):
        raise ExportError(f"rope scaling {kind!r} is not supported by tunesmith's GGUF export",
                          hint="supported: default, linear, yarn and llama3 rope scaling")
    return values, extra


# --------------------------------------------------------------------------- tensors


def interleave_rotary(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder q/k rows from transformers' rotate-half layout to llama.cpp's adjacent pairs."""
    rows = weight.shape[0]
    return (weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _tensor_type(array: np.ndarray, quant: str) -> str:
    if array.ndim == 1 or quant == "f32":
        return "F32"
    if quant in ("q8_0", "q4_0") and array.shape[-1] % 32:
        return "F16"  # block quants need rows in multiples of 32 values; llama.cpp falls back the same way
    return NATIVE_QUANTS[quant]


def _encode(array: np.ndarray, ggml_type: str) -> tuple[np.ndarray, Any]:
    import gguf

    qtype = getattr(gguf.GGMLQuantizationType, ggml_type)
    if ggml_type == "F32":
        return array.astype(np.float32), None
    if ggml_type == "F16":
        return array.astype(np.float16), None
    return gguf.quants.quantize(array.astype(np.float32), qtype), qtype


def convert_tensors(model, arch_name: str, interleave: bool) -> list[tuple[str, Callable[[], np.ndarray]]]:
    """(GGUF name, loader of the fp32 array) for every weight, in state-dict order."""
    import gguf

    config = model.config
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    allowed = set(gguf.MODEL_TENSORS[arch])
    tied = bool(getattr(config, "tie_word_embeddings", False))
    heads, kv_heads = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    out = []
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp reuses token_embd when output.weight is absent
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue  # recomputed from the rope metadata
        found = names.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))
        if found is None or found[0] not in allowed:
            raise ExportError(f"the model has a tensor {hf_name} that the GGUF {arch_name} architecture has no place for",
                              hint="GGUF export supports plain Llama, Mistral and Qwen2 models")
        name = found[1]

        def load(t=tensor, n=name) -> np.ndarray:
            array = t.detach().float().cpu().numpy()
            if interleave and (".attn_q." in n or ".attn_k." in n):
                array = interleave_rotary(array, heads if ".attn_q." in n else kv_heads)
            return array

        out.append((name, load))
    return out


# --------------------------------------------------------------------------- writing


def write_gguf(model, tokenizer, path: Path, quant: str, name: str, *, say: Callable[[str], None] = print) -> GGUFPlan:
    """Write `model` + `tokenizer` to `path` in a natively supported `quant`; return the plan."""
    import gguf

    architecture = (getattr(model.config, "architectures", None) or [type(model).__name__])[0]
    if architecture not in ARCHITECTURES:
        raise ExportError(f"GGUF export does not support {architecture}",
                          hint=f"supported architectures: {', '.join(ARCHITECTURES)}")
    if quant not in NATIVE_QUANTS:
        raise ExportError(f"{quant} is not written natively", hint="use llama_cpp_quantize for K-quants")
    arch, interleave = ARCHITECTURES[architecture]
    hparams, extra = hyper_parameters(model.config)
    tok = tokenizer_metadata(tokenizer, model.config.vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(tmp, arch, use_temp_file=True)
    writer.add_name(name)
    writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[quant]))
    if quant in ("q8_0", "q4_0"):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for method, value in hparams.items():
        getattr(writer, method)(value)
    writer.add_tokenizer_model(tok.model)
    writer.add_tokenizer_pre(tok.pre)
    writer.add_token_list(tok.tokens)
    writer.add_token_types(tok.types)
    if tok.scores is not None:
        writer.add_token_scores(tok.scores)
    if tok.merges:
        writer.add_token_merges(tok.merges)
    for kind, token_id in tok.special_ids.items():
        getattr(writer, f"add_{kind}_token_id")(token_id)
    writer.add_add_bos_token(tok.add_bos)
    writer.add_add_eos_token(tok.add_eos)
    if tok.add_space_prefix is not None:
        writer.add_add_space_prefix(tok.add_space_prefix)
    if tok.chat_template:
        writer.add_chat_template(tok.chat_template)

    planned: dict[str, tuple[tuple[int, ...], str | None]] = {}
    tensors = [(n, (lambda a=a: a)) for n, a in extra.items()] + convert_tensors(model, arch, interleave)
    for tensor_name, load in tensors:
        array = load()
        ggml_type = _tensor_type(array, quant)
        data, raw = _encode(array, ggml_type)
        # Quantised data arrives as bytes per row; the writer derives the element shape from it.
        writer.add_tensor(tensor_name, data, raw_dtype=raw)
        planned[tensor_name] = (tuple(array.shape), ggml_type)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, path)
    say(f"wrote {path} ({quant}, {len(planned)} tensors, {path.stat().st_size / 2**20:.1f} MiB)")
    metadata = {"general.architecture": arch, "general.name": name,
                **{f"{arch}.{k}": v for k, v in {
                    "block_count": model.config.num_hidden_layers,
                    "context_length": model.config.max_position_embeddings,
                    "embedding_length": model.config.hidden_size,
                    "feed_forward_length": model.config.intermediate_size,
                    "attention.head_count": hparams["add_head_count"],
                    "attention.head_count_kv": hparams["add_head_count_kv"],
                }.items()}}
    return GGUFPlan(path=path, arch=arch, quant=quant, metadata=metadata, tensors=planned, tokenizer=tok)


def llama_cpp_quantize(source: Path, target: Path, quant: str) -> None:
    """Re-quantise a GGUF with llama.cpp's quantiser (K-quants), through llama-cpp-python."""
    if not llama_cpp_available():
        raise ExportError(f"{quant} needs llama.cpp's quantiser, from the optional llama-cpp-python package",
                          hint="pip install 'tunesmith[llama-cpp]', or export q8_0 / q4_0, which need nothing extra")
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{LLAMA_CPP_FTYPES[quant]}")
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if status != 0:
        raise ExportError(f"llama.cpp could not quantise {source} to {quant} (status {status})")


__all__ = ["ARCHITECTURES", "LLAMA_CPP_FTYPES", "NATIVE_QUANTS", "GGUFPlan", "TokenizerMetadata",
           "hyper_parameters", "interleave_rotary", "llama3_rope_factors", "llama_cpp_available",
           "llama_cpp_quantize", "tokenizer_metadata", "write_gguf"]
