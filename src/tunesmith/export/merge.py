"""`tunesmith merge`: fold a LoRA adapter into its base model and prove nothing changed.

    tunesmith merge runs/sft --out merged/

The base is always reloaded unquantised (16-bit on a GPU, fp32 on CPU) — a QLoRA adapter is
merged into the full-precision base, never into 4-bit weights, whose rounding would swallow the
update. Before saving, the adapter model and the merged model run the same probe inputs and the
largest |logit difference| between them is printed and stored in the manifest (the parity
figure); a figure above the tolerance stops the merge.
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

FP32_TOLERANCE = 1e-4
HALF_TOLERANCE = 0.1


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
    diff = (reference - other).abs()
    return {
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "top1_agreement": float((reference.argmax(-1) == other.argmax(-1)).float().mean()),
        "positions": int(reference.shape[0]),
    }


def _refuse_quantized(model, where: str) -> None:
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False) \
            or getattr(model, "hf_quantizer", None) is not None:
        raise ExportError(
            f"the base model {where} is stored quantised, so the adapter cannot be merged into full-precision "
            "weights",
            hint="merge into the original 16-bit base: pass --base with the unquantised model it was made from",
        )


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
    try:
        merged = model.merge_and_unload(safe_merge=True)
    except ValueError as exc:  # peft's safe_merge found NaN/inf in the merged weights
        raise ExportError(f"merging produced invalid weights: {exc}",
                          hint="the adapter is probably broken (NaN weights); check the training run") from None
    merged.eval()
    parity = compare_logits(before, probe_logits(merged, ids, mask))
    limit = tolerance if tolerance is not None else (FP32_TOLERANCE if torch_dtype == torch.float32 else HALF_TOLERANCE)
    parity.update(dtype=str(torch_dtype).removeprefix("torch."), tolerance=limit, trained_on=trained_on)
    say(f"merge parity: max |logit difference| adapter vs merged = {parity['max_abs_logit_diff']:.3g} "
        f"over {parity['positions']} positions (tolerance {limit:g}); top-1 agreement {parity['top1_agreement']:.2%}")
    if parity["max_abs_logit_diff"] > limit:
        raise ExportError(
            f"the merged model's logits differ from the adapter model's by up to {parity['max_abs_logit_diff']:.3g}, "
            f"more than the tolerance {limit:g}",
            hint="merge in fp32 (--dtype fp32) for an exact merge, or raise --set parity_tolerance=... "
            "if this difference is expected for your dtype",
        )
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


__all__ = ["MergeResult", "Merged", "compare_logits", "generation_config_for", "merge_source", "probe_batch", "probe_logits",
           "run", "save_merged"]
