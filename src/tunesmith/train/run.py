"""One training run, whatever the objective: `tunesmith train CONFIG`.

Read top to bottom, `run` does:
1. `_setup`: join the process group (torchrun / accelerate launch), seed everything, resolve
   the data (a `tunesmith data prepare` directory, or raw files prepared on the way), load the
   base model and tokenizer (chat template, pad and stop tokens made safe), wrap it for LoRA,
   QLoRA or full fine-tuning, tokenise with the objective's loss masks, plan the micro-batches,
   build the optimiser and restore a checkpoint when resuming;
2. `_train`: the step loop, with exact accumulation (losses divided by step-wide normalisers),
   a divergence guard, logging, validation, early stopping and atomic checkpoints;
3. `_save_outputs`: `adapter/` (or `model/` for full fine-tuning) with the tokenizer,
   `metrics.jsonl`, the charts, `config.yaml` and `manifest.json`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunesmith.chat.tokens import prepare_chat_model
from tunesmith.train.config import TrainConfig
from tunesmith.errors import TrainingError
from tunesmith.manifest import sha256_file, write_stage_record
from tunesmith.plan import check_fits
from tunesmith.models.loading import load_model, load_tokenizer, resolve_model_path, weights_fingerprint, weights_stamp
from tunesmith.serve.engines.compat import check_training as check_serve_compat
from tunesmith.train import checkpoint_errors, distributed
from tunesmith.registry.sources import resolve_init
from tunesmith.train.adapters import apply_method, count_parameters, load_adapter_for_training
from tunesmith.train.checkpoint import (latest_checkpoint, load_checkpoint, resume_point, save_adapter_layout,
                                        save_checkpoint)
from tunesmith.train.data import TrainingData, load_training_data
from tunesmith.train.document_attention import attends_per_document
from tunesmith.train.environment import Dist, autocast_for, seed_everything, setup_distributed
from tunesmith.train.optim import build_optimizer, lr_at
from tunesmith.train.progress import Progress
from tunesmith.train.sharding import Sharding, no_sync
from tunesmith.train.state import TrainState
from tunesmith.train.tracking import MetricsLog, plot_charts


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    final_loss: float | None
    best_val_loss: float | None
    trainable_parameters: int
    total_parameters: int
    stopped_early: bool = False
    skipped_steps: list[int] = field(default_factory=list)

    def summary(self) -> str:
        early = (f"stopped early at step {self.steps}; best validation loss {self.best_val_loss:.4f}\n"
                 if self.stopped_early else "")
        return f"{early}done: {self.steps} steps; adapter and metrics in {self.output_dir}"


@dataclass
class Run:
    """Everything `_setup` builds for the loop and the outputs."""

    cfg: TrainConfig
    dist: Dist
    out: Path
    say: Any
    console: Any
    data: TrainingData
    tokenizer: Any
    model: Any
    optimizer: Any
    sharding: Sharding
    objective: Any
    plan: Any
    val_set: Any
    val_batches: list
    state: TrainState
    resumed: bool
    trainable: int
    total: int
    init: Any = None  # init_from, resolved (tunesmith.registry.sources.InitSource)

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    @property
    def weights_dir(self) -> Path:
        return self.out / ("model" if self.cfg.method == "full" else "adapter")


def run(cfg: TrainConfig, *, resume: bool | str | Path | None = None, console=None) -> TrainResult:
    """Train as configured. `resume=True` continues from the latest complete checkpoint in
    `output_dir/checkpoints`; a path resumes from that checkpoint."""
    check_serve_compat(cfg)  # before any work: an adapter the chosen engine cannot serve is refused now
    r = _setup(cfg, resume, console)
    last_loss, stopped_early = _train(r)
    _finish(r, stopped_early)
    return TrainResult(output_dir=r.out, steps=r.state.step, final_loss=last_loss,
                       best_val_loss=r.state.best_val_loss, trainable_parameters=r.trainable,
                       total_parameters=r.total, stopped_early=stopped_early,
                       skipped_steps=list(r.state.skipped_steps))


def make_objective(cfg: TrainConfig):
    objective = getattr(cfg, "objective", "sft")
    if objective == "sft":
        from tunesmith.train.sft import SupervisedObjective

        return SupervisedObjective(cfg.train)
    if objective == "pretrain":
        from tunesmith.train.pretrain import PretrainObjective

        return PretrainObjective(cfg)
    from tunesmith.train.objectives import for_config

    return for_config(cfg)


# --------------------------------------------------------------------------- 1. setup


def _setup(cfg: TrainConfig, resume, console) -> Run:
    dist = setup_distributed()
    out = Path(cfg.output_dir)
    resume_from = resume_point(resume, out)
    seed_everything(cfg.train.seed)
    say = _printer(console, dist)
    if dist.is_main and (warning := check_fits(cfg)):
        say(f"warning: {warning}")  # the memory plan, before anything large is loaded
    objective = make_objective(cfg)
    init = resolve_init(cfg.init_from, cfg.registry, cfg.model.path, cfg.model.revision, cfg.method) \
        if cfg.init_from else None
    if init is not None:
        say(f"init_from: {init.source.label} ({init.kind} in {init.weights_dir})")

    data = load_training_data(cfg, out, dist)
    say(f"data: {data.describe()}")

    # A run that continues another starts from its tokenizer and chat template (and, for a full
    # model, its weights), saved beside its weights.
    tokenizer = load_tokenizer(cfg.model) if init is None else init.load_tokenizer(cfg.model.trust_remote_code)
    sharding = distributed.for_run(cfg, dist)
    start = cfg.model if init is None or init.kind != "full" else cfg.model.model_copy(update={"path": str(init.weights_dir)})
    model = load_model(start, device=sharding.load_device, compute_device=dist.device)
    chat = prepare_chat_model(tokenizer, model)
    model = _wrap_for_method(cfg, model, chat, dist, init)
    trainable, total = count_parameters(model)
    say(f"model: {cfg.model.path} ({cfg.method}, objective {objective.name}); trainable parameters "
        f"{trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)")
    if chat.embeddings_changed:
        say(f"tokenizer: added special tokens; embeddings resized and saved with the adapter "
            f"({', '.join(chat.modules_to_save)})")

    train_set = objective.tokenize(data.train_rows, tokenizer, "train")
    val_set = objective.tokenize(data.val_rows, tokenizer, "validation") if data.val_rows else None
    for note in train_set.notes + (val_set.notes if val_set else []):
        say(note)
    mix = getattr(objective, "mix", None)
    if mix:
        say(f"data mix: {mix['corpus_tokens']:,} corpus tokens and {mix['conversation_tokens']:,} conversation "
            f"tokens ({100 * mix['conversation_share']:.1f}% conversations)")
    # flattened micro-batches (one sequence, boundaries passed to attention) for kernels that attend
    # within each example; the others get separate packed rows
    flatten = cfg.model.attn_implementation == "flash_attention_2" or attends_per_document(model, dist.device)
    plan = objective.batch_plan(train_set, dist, chat.pad.id, flatten)
    say(f"training: {len(train_set)} examples, {plan.steps_per_epoch} steps per epoch, {plan.total_steps} steps; "
        f"{plan.layout}, gradient accumulation {cfg.train.gradient_accumulation_steps}, {dist.world_size} process(es)")
    val_batches = objective.eval_batches(val_set, dist, chat.pad.id, flatten) if val_set else []

    if dist.enabled:
        say(f"distributed: {sharding.describe()}")
    model = sharding.wrap(model)  # before the optimiser: FSDP replaces the parameters with shards
    model, optimizer = sharding.wrap_optimizer(model, build_optimizer(cfg.train, model))
    state = TrainState()
    if resume_from is not None:
        with checkpoint_errors.loading(resume_from, dist.rank):
            state = load_checkpoint(resume_from, model, optimizer, dist, sharding)
        say(f"resumed from {resume_from} at step {state.step}")
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_stage_record(out, "train", cfg, seed=cfg.train.seed)  # the config is on disk from the start
        skipped = train_set.skipped + (val_set.skipped if val_set else [])
        if skipped:
            (out / "skipped_examples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in skipped))
    r = Run(cfg=cfg, dist=dist, out=out, say=say, console=console, data=data, tokenizer=tokenizer, model=model,
            optimizer=optimizer, sharding=sharding, objective=objective, plan=plan, val_set=val_set,
            val_batches=val_batches,
            state=state, resumed=resume_from is not None, trainable=trainable, total=total, init=init)
    prepare = getattr(objective, "before_training", None)
    if prepare is not None:  # e.g. reference log-probabilities for full fine-tuning
        prepare(r)
    return r


def _wrap_for_method(cfg: TrainConfig, model, chat, dist: Dist, init):
    if init is not None and init.kind == "adapter":  # continue the earlier run's adapter
        return load_adapter_for_training(model, cfg, init.weights_dir, device=dist.device)
    return apply_method(model, cfg, extra_modules_to_save=chat.modules_to_save,
                        tied_embeddings=chat.tied_embeddings, device=dist.device)


# --------------------------------------------------------------------------- 2. the loop


def _train(r: Run) -> tuple[float | None, bool]:
    """Optimiser steps until the plan's end or early stopping; returns (last loss, stopped early)."""
    cfg, dist, state = r.cfg, r.dist, r.state
    metrics = MetricsLog(r.out / "metrics.jsonl", cfg.train.report_to, r.out.name,
                         json.loads(cfg.model_dump_json()), enabled=dist.is_main, resume=r.resumed)
    total_steps = r.plan.total_steps
    eval_every = cfg.train.eval_every or r.plan.steps_per_epoch
    save_every = cfg.train.save_every or eval_every
    autocast = autocast_for(cfg.model.dtype, dist)
    best_weights: dict[str, torch.Tensor] | None = None
    last_loss: float | None = None
    stopped_early = False
    progress = Progress(total_steps, start=state.step, enabled=dist.is_main, console=r.console)
    window_start, window_tokens = time.perf_counter(), 0.0

    if cfg.method != "full":  # checkpoints can then be served while the run goes on
        save_adapter_layout(r.out, r.model, r.tokenizer, dist, r.sharding, resumed=r.resumed)
    r.model.train()
    while state.step < total_steps:
        step = state.step
        figures, grad_norm, tokens = _one_step(r, step, autocast)
        step_loss = figures["loss"]
        lr = lr_at(step, total_steps, cfg.train)
        if not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
            r.optimizer.zero_grad(set_to_none=True)
            what = "loss" if not math.isfinite(step_loss) else "gradient norm"
            if not cfg.train.skip_nonfinite_steps:
                metrics.log({"step": step + 1, "nonfinite": what})
                metrics.close()
                kept = latest_checkpoint(r.checkpoints)
                raise TrainingError(
                    f"training diverged at step {step + 1}: the {what} is {step_loss if what == 'loss' else grad_norm}",
                    hint=(f"the last good checkpoint is {kept}; " if kept else "no checkpoint was written yet; ")
                    + "lower train.learning_rate, check the data, or set train.skip_nonfinite_steps: true",
                )
            state.skipped_steps.append(step + 1)
            r.say(f"step {step + 1}: non-finite {what}, update skipped")
        else:
            for group in r.optimizer.param_groups:
                group["lr"] = lr
            r.sharding.step(r.model, r.optimizer)
            r.optimizer.zero_grad(set_to_none=True)
            last_loss = step_loss
        state.step = step = step + 1
        state.trained_tokens += int(tokens)
        window_tokens += tokens
        progress.update(step, loss=step_loss, lr=lr)

        if step % cfg.train.log_every == 0 or step == total_steps:
            elapsed = time.perf_counter() - window_start
            record = {"step": step, "epoch": round(step / r.plan.steps_per_epoch, 4), "loss": round(step_loss, 6),
                      **{k: round(v, 6) for k, v in figures.items() if k != "loss"},
                      "lr": lr, "grad_norm": round(grad_norm, 6), "trained_tokens": state.trained_tokens,
                      "tokens_per_s": round(window_tokens / max(elapsed, 1e-9), 1)}
            metrics.log(record)
            progress.note(record)
            window_start, window_tokens = time.perf_counter(), 0.0

        evaluated = False
        if r.val_batches and (step % eval_every == 0 or step == total_steps):
            val = evaluate(r.model, r.val_batches, r.objective, dist, autocast)
            metrics.log({"step": step, **{f"val_{k}": round(v, 6) for k, v in val.items()}})
            progress.note({"step": step, "val_loss": val["loss"]})
            evaluated = True
            if state.record_evaluation(val[r.objective.val_key]) and cfg.train.early_stopping_patience \
                    and cfg.method != "full":
                best_weights = r.sharding.trainable_state(r.model)
            r.model.train()
        if step % save_every == 0 or step == total_steps:
            with checkpoint_errors.saving(r.checkpoints, step):
                save_checkpoint(r.checkpoints, step, r.model, r.optimizer, state, dist, cfg.train.keep_checkpoints,
                                r.sharding)
        if evaluated and cfg.train.early_stopping_patience and state.bad_evals >= cfg.train.early_stopping_patience:
            r.say(f"early stopping at step {step}: validation loss has not improved for "
                  f"{state.bad_evals} evaluations (best {state.best_val_loss:.4f} at step {state.best_step})")
            if best_weights is not None:
                r.sharding.load_trainable_state(r.model, best_weights)
            stopped_early = True
            break
    progress.close()
    metrics.close()
    return last_loss, stopped_early


def _one_step(r: Run, step: int, autocast) -> tuple[dict[str, float], float, float]:
    """Forward and backward over the step's micro-batches; returns (figures, gradient norm, tokens)."""
    dist = r.dist
    micro_batches = r.plan.micro_batches_for_step(step)
    norms = {k: dist.all_sum(v) for k, v in r.objective.normalisers(micro_batches).items()}
    sums: dict[str, float] = {}
    for i, batch in enumerate(micro_batches):
        # DDP all-reduces gradients only on the last micro-batch of the step.
        sync = i == len(micro_batches) - 1 or not dist.enabled
        with no_sync(r.model, sync), autocast:
            loss, stats = r.objective.loss(r.model, batch, norms, dist.device)
        (loss * r.sharding.loss_scale).backward()
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + v
    sums = {k: dist.all_sum(v) for k, v in sorted(sums.items())}
    figures = r.objective.summarise(sums, norms)
    grad_norm = r.sharding.clip_grad_norm(r.model, r.optimizer, r.cfg.train.max_grad_norm)
    return figures, grad_norm, norms["tokens"]


@torch.no_grad()
def evaluate(model, batches, objective, dist: Dist, autocast) -> dict[str, float]:
    """Validation figures over the whole validation set (every rank's share)."""
    model.eval()
    sums: dict[str, float] = {}
    totals: dict[str, float] = {}
    for batch in batches:
        norms = objective.normalisers([batch])
        if norms["tokens"] == 0:
            continue
        with autocast:
            _, stats = objective.loss(model, batch, norms, dist.device)
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + v
        for k, v in norms.items():
            totals[k] = totals.get(k, 0.0) + v
    sums = {k: dist.all_sum(v) for k, v in sorted(sums.items())}
    totals = {k: dist.all_sum(v) for k, v in sorted(totals.items())} or {"tokens": 0.0}
    return objective.summarise(sums, totals)


# --------------------------------------------------------------------------- 3. outputs


def _finish(r: Run, stopped_early: bool) -> None:
    if r.dist.enabled:
        r.state.distributed = {"world_size": r.dist.world_size, "strategy": r.sharding.name,
                               "ranks_agree": r.sharding.ranks_agree(r.model)}
        if not r.state.distributed["ranks_agree"]:
            raise TrainingError("the processes of this distributed run ended with different weights",
                                hint="this is a bug in the distributed setup; please report it with the config")
    r.sharding.save_pretrained(r.model, r.weights_dir)  # every rank
    if r.dist.is_main:
        _save_outputs(r, stopped_early)
        r.say(f"saved {r.weights_dir}; metrics in {r.out / 'metrics.jsonl'}")
    r.dist.barrier()


def _save_outputs(r: Run, stopped_early: bool) -> None:
    cfg, out, state = r.cfg, r.out, r.state
    model = distributed.unwrap(r.model)
    target = r.weights_dir  # weights written by sharding.save_pretrained
    r.tokenizer.save_pretrained(target)
    if cfg.method == "full" and getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(target)
    charts = plot_charts(out / "metrics.jsonl", out)
    base_path = resolve_model_path(cfg.model.path)
    outputs = [p for p in target.rglob("*") if p.is_file()]
    outputs += [p for p in (out / "metrics.jsonl", *charts) if p.is_file()]
    extra_outputs = getattr(r.objective, "outputs", None)
    if extra_outputs is not None:
        outputs += [p for p in extra_outputs(r) if p.is_file()]
    write_stage_record(
        out, "train", cfg,
        inputs={"data": r.data.files},
        outputs=outputs,
        seed=cfg.train.seed,
        extra={
            "method": cfg.method,
            "objective": r.objective.name,
            "base_model": {"path": base_path, "revision": cfg.model.revision,
                           "weights_sha256": weights_fingerprint(base_path),
                           "weights_stamp": weights_stamp(base_path)},
            "dataset_manifest_sha256": sha256_file(r.data.manifest) if r.data.manifest else None,
            "parameters": {"trainable": r.trainable, "total": r.total},
            "steps": state.step,
            "trained_tokens": state.trained_tokens,
            "best_val_loss": state.best_val_loss,
            "best_step": state.best_step,
            "stopped_early": stopped_early,
            "skipped_steps": state.skipped_steps,
            "distributed": state.distributed or {"world_size": 1},
            **({"data_mix": r.objective.mix} if getattr(r.objective, "mix", None) else {}),
            **({"data_replay": r.data.replay} if r.data.replay is not None else {}),
            **({"init_from": r.init.record()} if r.init is not None else {}),
        },
    )


def _printer(console, dist: Dist):
    def say(message: str) -> None:
        if not dist.is_main:
            return
        if console is not None:
            console.print(message, highlight=False, markup=False, soft_wrap=True)
        else:
            print(message, file=sys.stderr, flush=True)
    return say
