"""The `tunesmith plan` verb (registered in tunesmith.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tunesmith.plan.devices import GPUS


def plan(
    config: Optional[Path] = typer.Argument(None, help="Training config YAML, as for `tunesmith train`."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="Target GPU, e.g. h100-80gb, a100-40gb, l4-24gb "
                                      "(`--gpu list` lists them); default: this machine's RAM."),
    memory: Optional[str] = typer.Option(None, "--memory", help="Memory per GPU instead of a name, e.g. 24GiB."),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="GPUs (processes); fsdp / deepspeed_zero3 shard over them."),
    trained_share: Optional[float] = typer.Option(None, "--trained-share", help="Share of positions that carry "
                                                  "loss (default: measured on the data, else 0.5)."),
    serve_batch: Optional[int] = typer.Option(None, "--serve-batch", help="Sequences served together, for the KV cache (default 8)."),
    serve_context: Optional[int] = typer.Option(None, "--serve-context", help="Tokens per served sequence (default: train.max_seq_len)."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="Override a key of the training config, as `train` takes it (repeatable)."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config with defaults and exit."),
) -> None:
    """Plan a training run's memory per component (weights, LoRA, gradients, optimiser, activations,
    logits, KV cache), say whether it fits the GPU or this machine's RAM, and what to change if not."""
    from tunesmith import cli
    from tunesmith.plan import run as plan_run
    from tunesmith.plan.config import PlanConfig

    if gpu == "list":
        for name, (description, gib, _) in GPUS.items():
            typer.echo(f"{name:<14} {gib:6.1f} GiB  {description}")
        return
    cfg = cli.resolve_config(PlanConfig, None, None, print_config, train_config=config, overrides=sets or None, gpu=gpu,
                             memory=memory, gpus=gpus, trained_share=trained_share, serve_batch=serve_batch,
                             serve_context=serve_context)
    result = plan_run(cfg)
    cli.console.print(result.summary(), markup=False, highlight=False, soft_wrap=True)
    if not result.fits:
        raise typer.Exit(1)


__all__ = ["plan"]
