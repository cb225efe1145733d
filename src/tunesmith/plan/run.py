"""`tunesmith plan CONFIG` and `tunesmith.plan.run(cfg)`: the memory a training run needs, per
component, whether it fits the GPU (or this machine's RAM), and verified changes when it does not."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.config import load_config
from tunesmith.plan.config import PlanConfig, TrainConfig
from tunesmith.plan.devices import GIB, Target, resolve_target
from tunesmith.plan.memory import Estimate, estimate, workload
from tunesmith.plan.shapes import ModelShape, load_shape

DEFAULT_TRAINED_SHARE = 0.5
_SAMPLE_ROWS = 200


@dataclass
class Suggestion:
    """A change that was planned again and fits: `--set` overrides and/or more GPUs."""

    overrides: list[str]
    gpus: int
    total: int
    why: str

    def command_args(self) -> str:
        args = [f"--set {o}" for o in self.overrides]
        return " ".join(([f"--gpus {self.gpus}"] if self.gpus > 1 else []) + args)


@dataclass
class PlanResult:
    model: str
    shape: ModelShape
    estimate: Estimate
    trained_share: float
    trained_share_source: str
    serve_context: int
    serve_batch: int
    gpus: int = 1
    suggestions: list[Suggestion] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.estimate.fits

    @property
    def ok(self) -> bool:
        """`tunesmith plan` exits 1 when the run does not fit."""
        return self.fits

    def summary(self) -> str:
        e = self.estimate
        s = self.shape
        lines = [f"model: {self.model}: {s.total_params / 1e6:,.0f}M parameters, {s.layers} layers, "
                 f"hidden {s.hidden}, vocabulary {s.vocab:,}",
                 f"target: {e.target.describe()}" + (f", {self.gpus} processes" if self.gpus > 1 else ""),
                 f"trained positions: {self.trained_share:.0%} ({self.trained_share_source})",
                 ""]
        width = max(len(c.name) for c in e.components)
        for c in e.components:
            lines.append(f"  {c.name:<{width}}  {c.bytes / GIB:8.2f} GiB  {c.note}".rstrip())
        lines.append(f"  {'peak':<{width}}  {e.total / GIB:8.2f} GiB  at the {e.phase}")
        lines.append("")
        share = e.total / e.target.bytes
        if e.fits:
            lines.append(f"fits: {share:.0%} of {e.target.bytes / GIB:.1f} GiB"
                         + (" (tight: little room for longer rows or allocator spikes)" if share > 0.9 else ""))
        else:
            lines.append(f"does not fit: needs {e.total / GIB:.2f} GiB of {e.target.bytes / GIB:.1f} GiB")
            if self.suggestions:
                lines.append("changes that fit (planned again with them):")
                for sug in self.suggestions:
                    lines.append(f"  {sug.command_args()}  -> {sug.total / GIB:.2f} GiB  ({sug.why})")
            else:
                lines.append("no change the planner knows of fits; use a smaller model or a larger device")
        lines.extend(e.notes)
        lines.append(f"serving: weights {e.serve_weights / GIB:.2f} GiB + KV cache {e.kv_cache / GIB:.2f} GiB "
                     f"({self.serve_batch} sequences x {self.serve_context} tokens)")
        return "\n".join(lines)


def measure_trained_share(cfg: TrainConfig) -> float | None:
    """Share of token positions that carry loss in the first training examples, with the model's
    own tokenizer and chat template; None when the data or the tokenizer is not on this machine."""
    if cfg.train.train_on_inputs:
        return 1.0
    paths = [Path(p) for p in cfg.data.path]
    files = [p / "train.jsonl" if p.is_dir() else p for p in paths]
    rows = []
    for file in files:
        if not file.is_file() or file.suffix != ".jsonl":
            return None
        with open(file, encoding="utf-8") as fh:
            for line in fh:
                if len(rows) >= _SAMPLE_ROWS:
                    break
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    conversations = [r["messages"] for r in rows if isinstance(r, dict) and isinstance(r.get("messages"), list)]
    if not conversations:
        return 1.0 if rows and all("text" in r for r in rows if isinstance(r, dict)) else None
    from tunesmith.chat.masking import IGNORE_INDEX, tokenize_conversation
    from tunesmith.chat.tokens import prepare_chat_model
    from tunesmith.errors import TunesmithError
    from tunesmith.models.loading import load_tokenizer

    try:
        tokenizer = load_tokenizer(cfg.model)
        prepare_chat_model(tokenizer)
    except (TunesmithError, OSError, ValueError):
        return None
    trained = total = 0
    for messages in conversations:
        try:
            tok = tokenize_conversation(tokenizer, messages, max_length=cfg.train.max_seq_len)
        except TunesmithError:
            continue
        trained += sum(1 for t in tok.labels[1:] if t != IGNORE_INDEX)
        total += len(tok.labels)
    return trained / total if total else None


def _train_config(cfg: PlanConfig, extra: list[str] = ()) -> TrainConfig:
    return load_config(TrainConfig, cfg.train_config, [*cfg.overrides, *extra])


def _plan(train_cfg: TrainConfig, shape: ModelShape, target: Target, gpus: int, share: float,
          serve_batch: int, serve_context: int) -> Estimate:
    return estimate(shape, workload(train_cfg, target, gpus, share), target, serve_batch, serve_context)


def suggest(cfg: PlanConfig, shape: ModelShape, target: Target, share: float, serve_context: int,
            limit: int = 3) -> list[Suggestion]:
    """Changes that make the plan fit, each planned again through the same config loader (so each
    `--set` is valid for `tunesmith train`), least disruptive first: single changes, then the
    cheapest combination that fits."""
    base = _train_config(cfg)
    train = base.train
    steps: list[tuple[list[str], int, str]] = []   # cumulative candidates: (overrides, gpus, why)
    if not train.gradient_checkpointing:
        steps.append((["train.gradient_checkpointing=true"], 1, "recompute activations in the backward pass"))
    mb, accumulation = train.micro_batch_size, train.gradient_accumulation_steps
    while mb > 1:
        mb //= 2
        accumulation = max(1, train.micro_batch_size * train.gradient_accumulation_steps // mb)
        steps.append(([f"train.micro_batch_size={mb}", f"train.gradient_accumulation_steps={accumulation}"], 1,
                      "smaller micro-batches, same global batch"))
    if target.gpu and train.optimizer == "adamw":
        steps.append((["train.optimizer=adamw_8bit"], 1, "8-bit optimiser state"))
    if target.gpu and base.method != "qlora":
        steps.append((["method=qlora"], 1, "4-bit base weights"))
    if target.gpu and base.method != "qlora":
        for gpus in (2, 4, 8):
            if gpus > cfg.gpus:
                steps.append((["train.distributed=fsdp"], gpus, f"shard over {gpus} GPUs with FSDP"))
    seq = train.max_seq_len
    while seq > 256:
        seq //= 2
        steps.append(([f"train.max_seq_len={seq}"], 1, "shorter rows (longer examples are cut)"))

    def plan_with(overrides: list[str], gpus: int) -> Estimate | None:
        try:
            train_cfg = _train_config(cfg, overrides)
        except Exception:  # a combination the config refuses is not a suggestion
            return None
        return _plan(train_cfg, shape, target, max(gpus, cfg.gpus), share, cfg.serve_batch, serve_context)

    found: list[Suggestion] = []
    for overrides, gpus, why in steps:   # single changes
        e = plan_with(overrides, gpus)
        if e is not None and e.fits:
            found.append(Suggestion(overrides, max(gpus, cfg.gpus), e.total, why))
    if found:
        return _distinct(found)[:limit]
    combined: list[str] = []
    gpus_so_far = cfg.gpus
    reasons: list[str] = []
    for overrides, gpus, why in steps:   # cumulative, in the same order
        keys = {o.partition("=")[0] for o in overrides}
        trial = [o for o in combined if o.partition("=")[0] not in keys] + overrides
        e = plan_with(trial, max(gpus, gpus_so_far))
        if e is None:
            continue
        combined, gpus_so_far = trial, max(gpus, gpus_so_far)
        reasons.append(why)
        if e.fits:
            return [Suggestion(combined, gpus_so_far, e.total, "; ".join(dict.fromkeys(reasons)))]
    return []


def _distinct(found: list[Suggestion]) -> list[Suggestion]:
    """One suggestion per kind of change (the first, least disruptive, fitting one)."""
    seen, out = set(), []
    for s in found:
        kind = (tuple(o.partition("=")[0] for o in s.overrides), s.gpus > 1)
        if kind not in seen:
            seen.add(kind)
            out.append(s)
    return out


def run(cfg: PlanConfig) -> PlanResult:
    """Plan the memory of the training run `cfg.train_config` (with `cfg.overrides`) on the target."""
    train_cfg = _train_config(cfg)
    shape = load_shape(train_cfg.model.path, train_cfg.model.trust_remote_code)
    target = resolve_target(cfg.gpu, cfg.memory)
    if cfg.trained_share is not None:
        share, source = cfg.trained_share, "given"
    else:
        measured = measure_trained_share(train_cfg)
        share, source = (measured, "measured on the first training examples") if measured is not None else \
            (DEFAULT_TRAINED_SHARE, "assumed; pass --trained-share or make the data local to measure it")
    context = cfg.serve_context or train_cfg.train.max_seq_len
    e = _plan(train_cfg, shape, target, cfg.gpus, share, cfg.serve_batch, context)
    result = PlanResult(model=train_cfg.model.path, shape=shape, estimate=e, trained_share=share,
                        trained_share_source=source, serve_context=context, serve_batch=cfg.serve_batch,
                        gpus=cfg.gpus)
    if not e.fits:
        result.suggestions = suggest(cfg, shape, target, share, context)
    return result


def check_fits(train_cfg: TrainConfig, target: Target | None = None) -> str | None:
    """A warning when the run `train_cfg` is planned not to fit the device it starts on, else None.

    `train` calls this before loading the model. The target is, unless given, the first CUDA
    device (with the process count of a torchrun / accelerate launch) or, without CUDA, this
    machine's RAM.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if target is None:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            target = Target(name=props.name, bytes=int(props.total_memory), gpu=True,
                            bf16=torch.cuda.is_bf16_supported())
        else:
            target = resolve_target(None, None)
    try:
        shape = load_shape(train_cfg.model.path, train_cfg.model.trust_remote_code)
    except Exception:  # the loader reports a missing or unreadable model with its own error
        return None
    share = measure_trained_share(train_cfg) or DEFAULT_TRAINED_SHARE
    e = estimate(shape, workload(train_cfg, target, world, share), target, 1, train_cfg.train.max_seq_len)
    if e.fits:
        return None
    return (f"the memory plan needs {e.total / GIB:.1f} GiB per process and {target.describe()} has less; "
            "training may run out of memory. `tunesmith plan CONFIG` shows the components and changes that fit")
