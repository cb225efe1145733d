"""`tunesmith merge`: fold a LoRA adapter into its base model and prove nothing changed.

    tunesmith merge runs/sft --out merged/

The base is always reloaded unquantised (16-bit on a GPU, fp32 on CPU) — a QLoRA adapter is
merged into the full-precision base, never into 4-bit weights, whose rounding would swallow the
update. Before saving, the adapter model and the merged model run the same probe inputs and the
largest |logit difference| between them is printed and stored in the manifest (the parity
figure). The tolerance scales with the logits (a fraction of the largest |logit|), and the top-1
token must agree wherever the adapter model's choice was clear; a merge that fails either stops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from tunesmith.chat.templates import render_prompt
from tunesmith.chat.tokens import stop_token_ids
from tunesmith.errors import ExportError
from tunesmith.export.config import MergeConfig
from tunesmith.export.probes import PROBE_CONVERSATIONS
from tunesmith.manifest import write_stage_record
from tunesmith.models.loading import load_model, resolve_dtype
from tunesmith.models.source import ModelSource, attach_adapter, load_tokenizer, resolve_source

# Fractions of the largest |logit| over the probes. fp32 rounds at 1.2e-7; a correct fp32 merge of
# SmolLM2-135M (30 layers) measured 1.0e-4 on logits up to about 30, i.e. 3e-6 relative, so 1e-4
# leaves a 30x margin while a dropped layer, a wrong scaling or a wrong adapter stay far above it.
FP32_RELATIVE_TOLERANCE = 1e-4
# bf16 keeps 8 bits of mantissa (3.9e-3 relative rounding).
HALF_RELATIVE_TOLERANCE = 2e-2


@dataclass
class Merged:
    """A merged (or already full) model in memory, with what the later steps need to know."""

    model: Any
    tokenizer: Any
    source: ModelSource
    dtype: torch.dtype
    parity: dict[str, Any] = field(default_factory=dict)


def probe_batch(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe conversations rendered through the chat template, right-padded, with a mask."""
    rows = [render_prompt(tokenizer, conv, add_generation_prompt=False) for conv in PROBE_CONVERSATIONS]
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


@torch.no_grad()
def probe_logits(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """fp32 logits at every real (unpadded) probe position, as a [positions, vocab] matrix."""
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()
    return logits[mask.bool()]


def compare_logits(reference: torch.Tensor, other: torch.Tensor) -> dict[str, Any]:
    """How far `other` is from `reference`, in float64 so the figures themselves add no rounding."""
    reference, other = reference.double(), other.double()
    diff = (reference - other).abs()
    return {
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "max_abs_logit": float(reference.abs().max()),
        "top1_agreement": float((reference.argmax(-1) == other.argmax(-1)).double().mean()),
        "positions": int(reference.shape[0]),
    }


def merge_tolerance(reference: torch.Tensor, dtype: torch.dtype, absolute: float | None = None) -> float:
    """The largest |logit difference| a correct merge may show: `absolute` when the user set one,
    else a fraction of the largest |logit| (at least 1) — rounding error grows with the logits'
    magnitude, so a fixed figure that fits a 4M model fails a correct merge of a real one."""
    if absolute is not None:
        return float(absolute)
    relative = FP32_RELATIVE_TOLERANCE if dtype == torch.float32 else HALF_RELATIVE_TOLERANCE
    return relative * max(1.0, float(reference.double().abs().max()))


def flipped_top1(reference: torch.Tensor, other: torch.Tensor, tolerance: float) -> int:
    """Positions whose top-1 token changed although the reference's winner led by more than
    `tolerance` — a near-tie may flip under rounding, a clear winner may not."""
    reference, other = reference.double(), other.double()
    best = reference.argmax(-1)
    theirs = other.argmax(-1)
    margin = reference.gather(-1, best[:, None])[:, 0] - reference.gather(-1, theirs[:, None])[:, 0]
    return int(((best != theirs) & (margin > tolerance)).sum())


def check_merge_parity(adapter_logits: torch.Tensor, merged_logits: torch.Tensor, dtype: torch.dtype, *,
                       absolute_tolerance: float | None = None, base_logits: torch.Tensor | None = None,
                       say: Callable[[str], None] = print) -> dict[str, Any]:
    """Compare the adapter model's probe logits with the merged model's; raise ExportError when
    the merge changed the model beyond rounding. Returns the figures for the manifest."""
    parity = compare_logits(adapter_logits, merged_logits)
    limit = merge_tolerance(adapter_logits, dtype, absolute_tolerance)
    flips = flipped_top1(adapter_logits, merged_logits, limit)
    parity.update(dtype=str(dtype).removeprefix("torch."), tolerance=limit, top1_flips=flips,
                  tolerance_rule="absolute (set by the user)" if absolute_tolerance is not None else
                  f"{FP32_RELATIVE_TOLERANCE if dtype == torch.float32 else HALF_RELATIVE_TOLERANCE:g} x max |logit|")
    effect = ""
    if base_logits is not None:
        parity["adapter_effect_max_abs"] = float((adapter_logits.double() - base_logits.double()).abs().max())
        effect = f"; the adapter itself moves logits by up to {parity['adapter_effect_max_abs']:.6e}"
    say(f"merge parity: max |logit difference| adapter vs merged = {parity['max_abs_logit_diff']:.6e} "
        f"(mean {parity['mean_abs_logit_diff']:.3e}) over {parity['positions']} positions; tolerance "
        f"{limit:.6e} ({parity['tolerance_rule']}, max |logit| {parity['max_abs_logit']:.4f}); "
        f"top-1 agreement {parity['top1_agreement']:.4%}{effect}")
    if parity["max_abs_logit_diff"] > limit or flips:
        reasons = []
        if parity["max_abs_logit_diff"] > limit:
            reasons.append(f"its logits differ from the adapter model's by up to {parity['max_abs_logit_diff']:.6e}, "
                           f"more than the tolerance {limit:.6e} (max |logit| {parity['max_abs_logit']:.4f})")
        if flips:
            reasons.append(f"its top-1 token differs at {flips} of {parity['positions']} positions where the "
                           "adapter model's choice was clear")
        raise ExportError(
            "the merged model is not the adapter model: " + "; and ".join(reasons),
            hint="merge in fp32 (--dtype fp32) for an exact merge; if the adapter or base changed since "
            "training, pass the right --base; raise --set parity_tolerance=... only if this difference is "
            "expected for your dtype",
        )
    return parity


def _refuse_quantized(model, where: str) -> None:
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False) \
            or getattr(model, "hf_quantizer", None) is not None:
        raise ExportError(
            f"the base model {where} is stored quantised, so the adapter cannot be merged into full-precision "
            "weights",
            hint="merge into the original 16-bit base: pass --base with the unquantised model it was made from",
        )


def fold_adapter(model):
    """The LoRA weights folded into the base weights (peft's merge_and_unload, NaN-checked)."""
    try:
        return model.merge_and_unload(safe_merge=True)
    except ValueError as exc:  # peft's safe_merge found NaN/inf in the merged weights
        raise ExportError(f"merging produced invalid weights: {exc}",
                          hint="the adapter is probably broken (NaN weights); check the training run") from None


def merge_source(source: ModelSource, *, dtype: str = "auto", device: str | None = None,
                 tolerance: float | None = None, say: Callable[[str], None] = print) -> Merged:
    """Merge `source`'s adapter into its unquantised base; a full model is loaded as it is."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = resolve_dtype(dtype, device)
    tokenizer = load_tokenizer(source)
    if source.kind != "adapter":
        model = load_model(source.model_config(source.weights, dtype=dtype, quantization="none"), device=device)
        _refuse_quantized(model, source.weights)
        return Merged(model=model.eval(), tokenizer=tokenizer, source=source, dtype=torch_dtype)

    base = load_model(source.model_config(source.weights, dtype=dtype, quantization="none"), device=device)
    _refuse_quantized(base, source.weights)
    trained_on = source.quantized_in_training
    say(f"merging {source.adapter.adapter_dir} into {source.weights} ({str(torch_dtype).removeprefix('torch.')}"
        + (f"; trained on a {trained_on} base, merged into the unquantised one" if trained_on != "none" else "") + ")")
    model = attach_adapter(base, tokenizer, source.adapter).eval()
    ids, mask = probe_batch(tokenizer)
    before = probe_logits(model, ids, mask)
    with model.disable_adapter():
        base_logits = probe_logits(model, ids, mask)
    merged = fold_adapter(model).eval()
    parity = check_merge_parity(before, probe_logits(merged, ids, mask), torch_dtype, absolute_tolerance=tolerance,
                                base_logits=base_logits, say=say)
    parity["trained_on"] = trained_on
    return Merged(model=merged, tokenizer=tokenizer, source=source, dtype=torch_dtype, parity=parity)


def generation_config_for(merged: Merged):
    """The base's generation config with every stop id (end-of-turn first) and the pad id."""
    from transformers import GenerationConfig

    config = getattr(merged.model, "generation_config", None) or GenerationConfig()
    config.eos_token_id = stop_token_ids(merged.tokenizer, config)
    if merged.tokenizer.pad_token_id is not None:
        config.pad_token_id = merged.tokenizer.pad_token_id
    if merged.tokenizer.bos_token_id is not None:
        config.bos_token_id = merged.tokenizer.bos_token_id
    return config


def save_merged(merged: Merged, out: Path, max_shard_size: str = "2GB") -> list[Path]:
    """Write safetensors shards, tokenizer, chat template and generation config into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    stale = [p for p in out.iterdir() if p.suffix == ".safetensors" or p.name == "model.safetensors.index.json"]
    for path in stale:  # shards of an earlier merge with another layout would be loaded alongside
        path.unlink()
    merged.model.generation_config = generation_config_for(merged)
    merged.model.save_pretrained(out, safe_serialization=True, max_shard_size=max_shard_size)
    merged.tokenizer.save_pretrained(out)
    template = getattr(merged.tokenizer, "chat_template", None)
    if isinstance(template, str) and not (out / "chat_template.jinja").is_file():
        (out / "chat_template.jinja").write_text(template, encoding="utf-8")
    return sorted(p for p in out.iterdir() if p.is_file() and p.name not in ("manifest.json", "config.yaml"))


@dataclass
class MergeResult:
    """The merged model's directory, the files written, and the adapter-vs-merged logit figures."""

    out: Path
    files: list[Path]
    parity: dict[str, Any]

    def summary(self) -> str:
        shards = len([p for p in self.files if p.suffix == ".safetensors"])
        return f"wrote merged model to {self.out} ({shards} safetensors file(s))"


def run(cfg: MergeConfig, *, say: Callable[[str], None] = print) -> MergeResult:
    """Merge the run's adapter and write the merged model to `cfg.out`."""
    source = resolve_source(cfg.run, base=cfg.base)
    if source.kind != "adapter":
        raise ExportError(
            f"{cfg.run} is not a LoRA run or adapter, so there is nothing to merge",
            hint="a full fine-tuning run already holds a complete model in its model/ folder; "
            "export it directly with `tunesmith export gguf`",
        )
    merged = merge_source(source, dtype=cfg.dtype, device=cfg.device, tolerance=cfg.parity_tolerance, say=say)
    out = Path(cfg.out)
    outputs = save_merged(merged, out, cfg.max_shard_size)
    write_stage_record(
        out, "merge", cfg,
        inputs={"adapter": source.adapter.adapter_dir},
        outputs=outputs,
        extra={
            "base_model": {"path": source.weights},
            "adapter": str(source.adapter.adapter_dir),
            "run_dir": str(source.run_dir) if source.run_dir else None,
            "method": source.method,
            "parity": merged.parity,
            "stop_token_ids": list(merged.model.generation_config.eos_token_id),
        },
    )
    return MergeResult(out, outputs, merged.parity)


__all__ = ["MergeResult", "Merged", "check_merge_parity", "compare_logits", "flipped_top1", "fold_adapter", "merge_tolerance",
           "generation_config_for", "merge_source", "probe_batch", "probe_logits",
           "run", "save_merged"]
