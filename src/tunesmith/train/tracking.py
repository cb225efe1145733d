"""Metric records: `metrics.jsonl`, the optional trackers (TensorBoard, W&B, MLflow) and the charts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.errors import TrainingError


class MetricsLog:
    """Appends metric records to metrics.jsonl and forwards them to the chosen trackers."""

    def __init__(self, path: Path, report_to: list[str], run_name: str, config: dict, enabled: bool, resume: bool):
        self.path = path
        self.enabled = enabled
        self.trackers: list[Any] = []
        if not enabled:
            return
        if not resume:
            path.write_text("")
        for name in report_to:
            if name == "none":
                continue
            self.trackers.append(_open_tracker(name, path.parent, run_name, config))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        step = record.get("step", 0)
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        for kind, tracker in self.trackers:
            if kind == "tensorboard":
                for k, v in numbers.items():
                    tracker.add_scalar(k, v, step)
            elif kind == "wandb":
                tracker.log(numbers, step=step)
            elif kind == "mlflow":
                tracker.log_metrics(numbers, step=step)

    def close(self) -> None:
        for kind, tracker in self.trackers:
            if kind == "tensorboard":
                tracker.close()
            elif kind == "wandb":
                tracker.finish()
            elif kind == "mlflow":
                tracker.end_run()


def _open_tracker(name: str, out_dir: Path, run_name: str, config: dict):
    try:
        if name == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            return name, SummaryWriter(log_dir=str(out_dir / "tensorboard"))
        if name == "wandb":
            import wandb

            return name, wandb.init(name=run_name, config=config)
        import mlflow

        mlflow.start_run(run_name=run_name)
        mlflow.log_params({k: str(v) for k, v in config.items()})
        return name, mlflow
    except ImportError:
        raise TrainingError(f"report_to: {name} needs the `{name}` package",
                            hint=f"pip install {name}, or remove it from train.report_to") from None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_charts(metrics_path: Path, out_dir: Path) -> list[Path]:
    """`loss.png`, and `reward_margin.png` for preference objectives; returns those written."""
    records = read_metrics(metrics_path)
    written = [p for p in (plot_loss(records, out_dir / "loss.png"),
                           plot_reward_margin(records, out_dir / "reward_margin.png")) if p is not None]
    return written


def plot_loss(records: list[dict[str, Any]], png: Path) -> Path | None:
    """Training and validation loss against optimiser step, as a PNG."""
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if not train and not val:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.5)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", lw=1.5)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png


def plot_reward_margin(records: list[dict[str, Any]], png: Path) -> Path | None:
    """Preference objectives: the reward margin (chosen minus rejected) and reward accuracy."""
    train = [(r["step"], r["rewards/margins"]) for r in records if "rewards/margins" in r]
    val = [(r["step"], r["val_rewards/margins"]) for r in records if "val_rewards/margins" in r]
    if not train and not val:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train reward margin", lw=1.5)
    if val:
        ax.plot(*zip(*val), "o-", label="validation reward margin", lw=1.5)
    accuracy = [(r["step"], r["rewards/accuracies"]) for r in records if "rewards/accuracies" in r]
    if accuracy:
        twin = ax.twinx()
        twin.plot(*zip(*accuracy), color="grey", lw=1, alpha=0.6, label="train reward accuracy")
        twin.set_ylim(0, 1.05)
        twin.set_ylabel("reward accuracy")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("reward margin (chosen - rejected)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
