"""Checks run after every GGUF export.

1. Structure, always: `gguf`'s reader opens the file; every planned tensor is there with its
   shape and type, nothing else is; the hyper-parameters, token list, token types, special ids
   and chat template read back as written.
2. Independent read-back, always (models up to a size that fits twice in memory): transformers'
   own GGUF loader rebuilds the tokenizer and the weights from the file — it undoes the q/k layout
   change and dequantises by itself — and must tokenise the probe strings identically and agree
   with the original model on the greedy next token.
3. llama.cpp, when llama-cpp-python is installed: identical tokenisation of the probe strings and
   greedy next-token agreement, computed by the runtime users will actually serve the file with.

Agreement is the share of probe positions (every position of the chat-rendered probe
conversations) where the file's most likely next token equals the HF model's.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from tunesmith.chat.templates import render_prompt, render_prompt_text
from tunesmith.errors import ExportError
from tunesmith.export.gguf import GGUFPlan, llama_cpp_available
from tunesmith.export.probes import PROBE_CONVERSATIONS, PROBE_TEXTS

DEFAULT_MIN_AGREEMENT = {"f32": 0.99, "f16": 0.99, "bf16": 0.99, "q8_0": 0.95}
# transformers' read-back holds a second fp32 copy of the model; above this it is skipped.
MAX_READBACK_PARAMETERS = 2_000_000_000
SPECIAL_KEYS = {"bos": "bos_token_id", "eos": "eos_token_id", "eot": "eot_token_id", "unk": "unknown_token_id",
                "pad": "padding_token_id"}


def field_value(reader, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def structural_check(plan: GGUFPlan, *, check_types: bool = True) -> dict[str, Any]:
    """Read the file back with `gguf.GGUFReader` and compare it with the plan; raise on mismatch."""
    import gguf

    reader = gguf.GGUFReader(plan.path)
    problems: list[str] = []
    found = {t.name: t for t in reader.tensors}
    for name, (shape, ggml_type) in plan.tensors.items():
        tensor = found.get(name)
        if tensor is None:
            problems.append(f"tensor {name} is missing")
            continue
        if [int(d) for d in tensor.shape] != list(reversed(shape)):  # GGUF lists dimensions innermost first
            problems.append(f"tensor {name} has shape {list(reversed([int(d) for d in tensor.shape]))}, expected {list(shape)}")
        if check_types and ggml_type is not None and tensor.tensor_type.name != ggml_type:
            problems.append(f"tensor {name} is {tensor.tensor_type.name}, expected {ggml_type}")
    problems += [f"unexpected tensor {name}" for name in found if name not in plan.tensors]
    for key, value in plan.metadata.items():
        got = field_value(reader, key)
        if got != value:
            problems.append(f"{key} = {got!r}, expected {value!r}")
    tok = plan.tokenizer
    expected = {
        "tokenizer.ggml.model": tok.model, "tokenizer.ggml.pre": tok.pre,
        "tokenizer.ggml.add_bos_token": tok.add_bos, "tokenizer.chat_template": tok.chat_template,
        **{f"tokenizer.ggml.{SPECIAL_KEYS[k]}": v for k, v in tok.special_ids.items()},
    }
    for key, value in expected.items():
        got = field_value(reader, key)
        if got != value:
            problems.append(f"{key} = {str(got)[:80]!r}, expected {str(value)[:80]!r}")
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    if tokens != tok.tokens:
        problems.append("tokenizer.ggml.tokens differs from the tokenizer's vocabulary")
    if list(field_value(reader, "tokenizer.ggml.token_type") or []) != tok.types:
        problems.append("tokenizer.ggml.token_type differs from the token types written")
    if problems:
        raise ExportError(f"the GGUF file {plan.path} does not read back as written:\n  " + "\n  ".join(problems[:20]),
                          hint="this is a bug in tunesmith's GGUF export; please report it with the model's config.json")
    return {"ok": True, "tensors": len(found), "metadata_keys": len(reader.fields), "vocab_size": len(tokens),
            "chat_template": bool(tok.chat_template), "special_token_ids": dict(tok.special_ids)}


def _probe_sequences(tokenizer) -> list[list[int]]:
    return [render_prompt(tokenizer, conv, add_generation_prompt=False) for conv in PROBE_CONVERSATIONS]


def probe_strings(tokenizer) -> list[tuple[str, bool]]:
    """(text, add special tokens) pairs: plain probe texts encoded as a user's text is (BOS added
    when the tokenizer adds one), and rendered probe conversations, which already hold their
    control tokens, BOS included, encoded as they are."""
    chats = [render_prompt_text(tokenizer, conv, add_generation_prompt=False) for conv in PROBE_CONVERSATIONS]
    return [(text, True) for text in PROBE_TEXTS] + [(text, False) for text in chats]


@torch.no_grad()
def _reference_top1(model, sequences: list[list[int]]) -> list[np.ndarray]:
    device = next(model.parameters()).device
    return [model(input_ids=torch.tensor([s], device=device)).logits[0].float().argmax(-1).cpu().numpy()
            for s in sequences]


def _agreement(reference: list[np.ndarray], other: list[np.ndarray]) -> float:
    total = sum(len(r) for r in reference)
    return float(sum(int((r == o).sum()) for r, o in zip(reference, other)) / total) if total else 0.0


def transformers_readback(plan: GGUFPlan, model, tokenizer) -> dict[str, Any]:
    """Tokeniser round-trip and top-1 agreement through transformers' independent GGUF loader."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = plan.path
    try:
        loaded_tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (ValueError, KeyError, OSError) as exc:
        return {"skipped": f"transformers cannot read this GGUF tokenizer: {exc}"}
    if plan.tokenizer.model == "llama" and plan.tokenizer.add_space_prefix:
        # transformers rebuilds SentencePiece vocabularies with Metaspace(prepend_scheme="first"),
        # which adds no "▁" before text that already starts with a space; llama.cpp always adds
        # one (`add_space_prefix`). Read the file the way llama.cpp does, so a difference found
        # here is one llama.cpp would show too.
        from tokenizers import normalizers

        backend = loaded_tok.backend_tokenizer
        backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        backend.pre_tokenizer = None
    strings = probe_strings(tokenizer)
    mismatched = [text for text, special in strings
                  if tokenizer(text, add_special_tokens=special)["input_ids"]
                  != loaded_tok(text, add_special_tokens=special)["input_ids"]]
    result: dict[str, Any] = {"tokenizer_probe_strings": len(strings), "tokenizer_identical": not mismatched,
                              "tokenizer_mismatches": mismatched[:5]}
    parameters = sum(p.numel() for p in model.parameters())
    if parameters > MAX_READBACK_PARAMETERS:
        result["agreement_skipped"] = (f"{parameters / 1e9:.1f}B parameters; the read-back would hold a second "
                                       "full copy in memory (install llama-cpp-python for the runtime check)")
        return result
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    sequences = _probe_sequences(tokenizer)
    reference = _reference_top1(model, sequences)
    result["top1_agreement"] = _agreement(reference, _reference_top1(loaded, sequences))
    result["positions"] = sum(len(s) for s in sequences)
    del loaded
    return result


def llama_cpp_check(plan: GGUFPlan, model, tokenizer) -> dict[str, Any]:
    """Tokenisation and top-1 agreement through llama.cpp itself (llama-cpp-python)."""
    if not llama_cpp_available():
        return {"skipped": "llama-cpp-python is not installed (pip install 'tunesmith[llama-cpp]')"}
    from llama_cpp import Llama

    sequences = _probe_sequences(tokenizer)
    runtime = Llama(model_path=str(plan.path), n_ctx=max(64, max(map(len, sequences)) + 8), logits_all=True,
                    n_gpu_layers=0, verbose=False)
    strings = probe_strings(tokenizer)
    mismatched = []
    for text, special in strings:
        ours = tokenizer(text, add_special_tokens=special)["input_ids"]
        theirs = runtime.tokenize(text.encode("utf-8"), add_bos=special and plan.tokenizer.add_bos, special=True)
        if ours != theirs:
            mismatched.append(text)
    others = []
    for sequence in sequences:
        runtime.reset()
        runtime.eval(sequence)
        others.append(np.asarray(runtime.scores[: len(sequence)]).argmax(-1))
    return {"tokenizer_probe_strings": len(strings), "tokenizer_identical": not mismatched,
            "tokenizer_mismatches": mismatched[:5],
            "top1_agreement": _agreement(_reference_top1(model, sequences), others),
            "positions": sum(len(s) for s in sequences)}


def verify_export(plan: GGUFPlan, model, tokenizer, *, min_agreement: float | None,
                  say: Callable[[str], None] = print, check_types: bool = True) -> dict[str, Any]:
    """Run every check; `ok` is False when a tokeniser differs or agreement is below the minimum."""
    report: dict[str, Any] = {"structure": structural_check(plan, check_types=check_types)}
    say(f"structure: {report['structure']['tensors']} tensors, {report['structure']['vocab_size']} tokens, "
        f"chat template {'present' if report['structure']['chat_template'] else 'absent'} — read back OK")
    threshold = min_agreement if min_agreement is not None else DEFAULT_MIN_AGREEMENT.get(plan.quant)
    report["min_agreement"] = threshold
    failures = []
    for label, check in (("transformers", transformers_readback), ("llama_cpp", llama_cpp_check)):
        result = check(plan, model, tokenizer)
        report[label] = result
        if "skipped" in result:
            say(f"{label}: skipped ({result['skipped']})")
            continue
        line = f"{label}: tokenizer {'identical' if result['tokenizer_identical'] else 'DIFFERS'} on " \
               f"{result['tokenizer_probe_strings']} probe strings"
        if "top1_agreement" in result:
            line += f"; greedy next-token agreement {result['top1_agreement']:.2%} over {result['positions']} positions"
        say(line)
        if not result["tokenizer_identical"]:
            failures.append(f"{label} tokenises {len(result['tokenizer_mismatches'])}+ probe strings differently")
        if threshold is not None and result.get("top1_agreement", 1.0) < threshold:
            failures.append(f"{label} agreement {result['top1_agreement']:.2%} is below {threshold:.0%}")
    report["ok"] = not failures
    report["failures"] = failures
    return report


__all__ = ["DEFAULT_MIN_AGREEMENT", "field_value", "llama_cpp_check", "probe_strings", "structural_check",
           "transformers_readback", "verify_export"]
