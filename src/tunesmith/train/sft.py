"""Supervised fine-tuning: `tunesmith train CONFIG` and `tunesmith.train.sft.run(cfg)`.

Read top to bottom, one run does:
1. join the process group (torchrun / accelerate launch) and seed everything;
2. resolve the data: a `tunesmith data prepare` directory, or raw files prepared on the way;
3. load the base model and tokenizer, make the chat template, pad and stop tokens safe, and
   wrap the model for LoRA, QLoRA or full fine-tuning;
4. tokenise every conversation with its loss mask (assistant turns and their end-of-turn
   token only, unless `train_on_inputs`);
5. train with token-weighted gradient accumulation, a divergence guard, atomic checkpoints
   that resume exactly, validation, early stopping and a progress display;
6. save `adapter/` (or `model/` for full fine-tuning) with the tokenizer, `metrics.jsonl`,
   `loss.png`, `config.yaml` and `manifest.json`.
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

from tunesmith.chat.masking import tokenize_conversation
from tunesmith.chat.tokens import prepare_chat_model
from tunesmith.train.config import TrainConfig
from tunesmith.serve.engines.compat import check_training as check_serve_compat
from tunesmith.errors import TrainingError
from tunesmith.manifest import sha256_file, write_stage_record
from tunesmith.models.loading import (
    load_model,
    load_tokenizer,
    resolve_model_path,
    weights_fingerprint,
    weights_stamp,
)
from tunesmith.train import batching, checkpoint_errors, distributed
from tunesmith.train.common import (
    Dist,
    MetricsLog,
    apply_method,
    build_optimizer,
    count_parameters,
    latest_checkpoint,
    load_checkpoint,
    lr_at,
    plot_loss,
    save_checkpoint,
    seed_everything,
    setup_distributed,
)
from tunesmith.train.data import load_training_data
from tunesmith.train.loss import causal_lm_loss
from tunesmith.train.progress import Progress


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


def run(cfg: TrainConfig, *, resume: bool | str | Path | None = None, console=None) -> TrainResult:
    """Train as configured. `resume=True` continues from the latest complete checkpoint in
    `output_dir/checkpoints`; a path resumes from that checkpoint."""
    check_serve_compat(cfg)  # before any work: an adapter the chosen engine cannot serve is refused now
    dist = setup_distributed()
    out = Path(cfg.output_dir)
    checkpoints = out / "checkpoints"
    resume_from = _resume_point(resume, out, checkpoints)
    seed_everything(cfg.train.seed)
    say = _printer(console, dist)

    # 2. data
    data = load_training_data(cfg, out, dist)
    say(f"data: {data.describe()}")

    # 3. model
    tokenizer = load_tokenizer(cfg.model)
    sharding = distributed.for_run(cfg, dist)
    model = load_model(cfg.model, device=sharding.load_device, compute_device=dist.device)
    setup = prepare_chat_model(tokenizer, model)
    model = apply_method(model, cfg, extra_modules_to_save=setup.modules_to_save,
                         tied_embeddings=setup.tied_embeddings, device=dist.device)
    trainable, total = count_parameters(model)
    say(f"model: {cfg.model.path} ({cfg.method}); trainable parameters {trainable:,} of {total:,} "
        f"({100 * trainable / max(total, 1):.2f}%)")
    if setup.embeddings_changed:
        say(f"tokenizer: added special tokens; embeddings resized and saved with the adapter "
            f"({', '.join(setup.modules_to_save)})")

    # 4. tokenise with loss masks
    train_set = batching.tokenize_rows(data.train_rows, tokenizer, cfg.train, "train")
    val_set = batching.tokenize_rows(data.val_rows, tokenizer, cfg.train, "validation") if data.val_rows else None
    for note in train_set.notes + (val_set.notes if val_set else []):
        say(note)
    flatten = cfg.model.attn_implementation == "flash_attention_2"
    plan = batching.BatchPlan(train_set, cfg.train, dist, pad_id=setup.pad.id, flatten=flatten)
    total_steps = plan.total_steps
    say(f"training: {len(train_set)} examples, {plan.steps_per_epoch} steps per epoch, {total_steps} steps; "
        f"{'packed' if cfg.train.packing else 'padded'} micro-batches of {cfg.train.micro_batch_size}, "
        f"gradient accumulation {cfg.train.gradient_accumulation_steps}, {dist.world_size} process(es)")

    # 5. train
    if dist.enabled:
        say(f"distributed: {sharding.describe()}")
    model = sharding.wrap(model)  # before the optimiser: FSDP replaces the parameters with shards
    model, optimizer = sharding.wrap_optimizer(model, build_optimizer(cfg.train, model))
    state: dict[str, Any] = {"step": 0, "best_val_loss": None, "best_step": None, "bad_evals": 0,
                             "skipped_steps": [], "trained_tokens": 0}
    if resume_from is not None:
        with checkpoint_errors.loading(resume_from, dist.rank):
            state = load_checkpoint(resume_from, model, optimizer, dist, sharding)
        say(f"resumed from {resume_from} at step {state['step']}")
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_stage_record(out, "train", cfg, seed=cfg.train.seed)  # the config is on disk from the start
        skipped = train_set.skipped + (val_set.skipped if val_set else [])
        if skipped:
            (out / "skipped_examples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in skipped))
    metrics = MetricsLog(out / "metrics.jsonl", cfg.train.report_to, out.name,
                         json.loads(cfg.model_dump_json()), enabled=dist.is_main, resume=resume_from is not None)
    val_batches = batching.eval_batches(val_set, cfg.train, setup.pad.id, dist, flatten) if val_set else []
    eval_every = cfg.train.eval_every or plan.steps_per_epoch
    save_every = cfg.train.save_every or eval_every
    autocast = _autocast(cfg, dist)
    best_weights: dict[str, torch.Tensor] | None = None
    stopped_early = False
    last_loss: float | None = None
    progress = Progress(total_steps, start=state["step"], enabled=dist.is_main, console=console)
    window_start, window_tokens = time.perf_counter(), 0

    model.train()
    step = state["step"]
    while step < total_steps:
        micro_batches = plan.micro_batches_for_step(step)
        tokens = dist.all_sum(float(sum(b.num_trained_tokens for b in micro_batches)))
        loss_sum = 0.0
        for i, batch in enumerate(micro_batches):
            sync = i == len(micro_batches) - 1 or not dist.enabled
            with _maybe_no_sync(model, sync), autocast:
                # Token-weighted accumulation: every micro-batch's summed loss is divided by the
                # trained tokens of the whole step (all micro-batches, all ranks), so the update
                # equals the one a single large batch would make. DDP averages gradients over
                # ranks, hence the factor world_size.
                loss = causal_lm_loss(model, batch.model_inputs(dist.device), max(tokens, 1.0))
            (loss * sharding.loss_scale).backward()
            loss_sum += loss.item() * max(tokens, 1.0)
        step_loss = dist.all_sum(loss_sum) / max(tokens, 1.0)
        grad_norm = sharding.clip_grad_norm(model, optimizer, cfg.train.max_grad_norm)
        lr = lr_at(step, total_steps, cfg.train)
        if not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
            optimizer.zero_grad(set_to_none=True)
            what = "loss" if not math.isfinite(step_loss) else "gradient norm"
            if not cfg.train.skip_nonfinite_steps:
                metrics.log({"step": step + 1, "nonfinite": what})
                metrics.close()
                kept = latest_checkpoint(checkpoints)
                raise TrainingError(
                    f"training diverged at step {step + 1}: the {what} is {step_loss if what == 'loss' else grad_norm}",
                    hint=(f"the last good checkpoint is {kept}; " if kept else "no checkpoint was written yet; ")
                    + "lower train.learning_rate, check the data, or set train.skip_nonfinite_steps: true",
                )
            state["skipped_steps"].append(step + 1)
            say(f"step {step + 1}: non-finite {what}, update skipped")
        else:
            for group in optimizer.param_groups:
                group["lr"] = lr
            sharding.step(model, optimizer)
            optimizer.zero_grad(set_to_none=True)
            last_loss = step_loss
        step += 1
        state["step"] = step
        state["trained_tokens"] += int(tokens)
        window_tokens += tokens
        progress.update(step, loss=step_loss, lr=lr)

        if step % cfg.train.log_every == 0 or step == total_steps:
            elapsed = time.perf_counter() - window_start
            record = {"step": step, "epoch": round(step / plan.steps_per_epoch, 4), "loss": round(step_loss, 6),
                      "lr": lr, "grad_norm": round(grad_norm, 6), "trained_tokens": state["trained_tokens"],
                      "tokens_per_s": round(window_tokens / max(elapsed, 1e-9), 1)}
            metrics.log(record)
            progress.note(record)
            window_start, window_tokens = time.perf_counter(), 0

        evaluated = False
        if val_set is not None and (step % eval_every == 0 or step == total_steps):
            val_loss = evaluate(model, val_batches, dist, autocast)
            metrics.log({"step": step, "val_loss": round(val_loss, 6)})
            progress.note({"step": step, "val_loss": val_loss})
            evaluated = True
            if state["best_val_loss"] is None or val_loss < state["best_val_loss"]:
                state.update(best_val_loss=val_loss, best_step=step, bad_evals=0)
                if cfg.train.early_stopping_patience and cfg.method != "full":
                    best_weights = sharding.trainable_state(model)
            else:
                state["bad_evals"] += 1
            model.train()
        if step % save_every == 0 or step == total_steps:
            with checkpoint_errors.saving(checkpoints, step):
                save_checkpoint(checkpoints, step, model, optimizer, state, dist, cfg.train.keep_checkpoints, sharding)
        if evaluated and cfg.train.early_stopping_patience and state["bad_evals"] >= cfg.train.early_stopping_patience:
            say(f"early stopping at step {step}: validation loss has not improved for "
                f"{state['bad_evals']} evaluations (best {state['best_val_loss']:.4f} at step {state['best_step']})")
            if best_weights is not None:
                sharding.load_trainable_state(model, best_weights)
            stopped_early = True
            break
    progress.close()
    metrics.close()
    if dist.enabled:
        state["distributed"] = {"world_size": dist.world_size, "strategy": sharding.name,
                                "ranks_agree": sharding.ranks_agree(model)}
        if not state["distributed"]["ranks_agree"]:
            raise TrainingError("the processes of this distributed run ended with different weights",
                                hint="this is a bug in the distributed setup; please report it with the config")

    # 6. outputs
    sharding.save_pretrained(model, out / ("model" if cfg.method == "full" else "adapter"))  # every rank
    if dist.is_main:
        _save_outputs(cfg, model, tokenizer, out, data, state, trainable, total, stopped_early)
        say(f"saved {out / ('model' if cfg.method == 'full' else 'adapter')}; metrics in {out / 'metrics.jsonl'}")
    dist.barrier()
    return TrainResult(output_dir=out, steps=state["step"], final_loss=last_loss,
                       best_val_loss=state["best_val_loss"], trainable_parameters=trainable,
                       total_parameters=total, stopped_early=stopped_early,
                       skipped_steps=list(state["skipped_steps"]))


@torch.no_grad()
def evaluate(model, batches, dist: Dist, autocast) -> float:
    """Validation loss: mean over every trained token of the validation set."""
    model.eval()
    total, tokens = 0.0, 0.0
    for batch in batches:
        n = batch.num_trained_tokens
        if n == 0:
            continue
        with autocast:
            loss = causal_lm_loss(model, batch.model_inputs(dist.device), float(n))
        total += loss.item() * n
        tokens += n
    return dist.all_sum(total) / max(dist.all_sum(tokens), 1.0)


def _save_outputs(cfg, model, tokenizer, out: Path, data, state, trainable: int, total: int, stopped_early: bool):
    model = distributed.unwrap(model)
    target = out / ("model" if cfg.method == "full" else "adapter")  # weights written by sharding.save_pretrained
    tokenizer.save_pretrained(target)
    if cfg.method == "full" and getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(target)
    plot_loss(out / "metrics.jsonl", out / "loss.png")
    base_path = resolve_model_path(cfg.model.path)
    outputs = [p for p in target.rglob("*") if p.is_file()]
    outputs += [p for p in (out / "metrics.jsonl", out / "loss.png") if p.is_file()]
    write_stage_record(
        out, "train", cfg,
        inputs={"data": data.files},
        outputs=outputs,
        seed=cfg.train.seed,
        extra={
            "method": cfg.method,
            "base_model": {"path": base_path, "revision": cfg.model.revision,
                           "weights_sha256": weights_fingerprint(base_path),
                           "weights_stamp": weights_stamp(base_path)},
            "dataset_manifest_sha256": sha256_file(data.manifest) if data.manifest else None,
            "parameters": {"trainable": trainable, "total": total},
            "steps": state["step"],
            "trained_tokens": state["trained_tokens"],
            "best_val_loss": state["best_val_loss"],
            "best_step": state["best_step"],
            "stopped_early": stopped_early,
            "skipped_steps": state["skipped_steps"],
            "distributed": state.get("distributed", {"world_size": 1}),
        },
    )


def _resume_point(resume, out: Path, checkpoints: Path) -> Path | None:
    if resume is None or resume is False:
        if (out / "adapter").exists() or (out / "model").exists() or latest_checkpoint(checkpoints):
            raise TrainingError(
                f"{out} already holds a training run",
                hint="pass --resume to continue it, or choose another output_dir (--set output_dir=...)",
            )
        return None
    if resume is True:
        found = latest_checkpoint(checkpoints)
        if found is None:
            raise TrainingError(f"nothing to resume: no complete checkpoint in {checkpoints}",
                                hint="start without --resume")
        return found
    path = Path(resume)
    if not path.is_dir():
        raise TrainingError(f"checkpoint not found: {path}")
    return path


def _autocast(cfg: TrainConfig, dist: Dist):
    if dist.device.startswith("cuda") and cfg.model.dtype in ("auto", "bf16") and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _maybe_no_sync(model, sync: bool):
    return distributed.no_sync(model, sync)


def _printer(console, dist: Dist):
    def say(message: str) -> None:
        if not dist.is_main:
            return
        if console is not None:
            console.print(message, highlight=False, markup=False, soft_wrap=True)
        else:
            print(message, file=sys.stderr, flush=True)
    return say
