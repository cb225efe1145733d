"""Progress display for training: a live bar on a terminal, periodic lines elsewhere (CI logs)."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Progress:
    def __init__(self, total: int, *, start: int = 0, enabled: bool = True, console: Console | None = None):
        self.total = total
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self.live = enabled and self.console.is_terminal
        self.started = time.perf_counter()
        self.start_step = start
        self.last: dict[str, Any] = {}
        self._bar = None
        if self.live:
            self._bar = RichProgress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("lr {task.fields[lr]}"),
                TextColumn("{task.fields[tps]} tok/s"), TimeElapsedColumn(), TextColumn("ETA"),
                TimeRemainingColumn(), console=self.console, transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("train", total=total, completed=start, loss="-", lr="-", tps="-")

    def update(self, step: int, *, loss: float, lr: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step, loss=f"{loss:.4f}", lr=f"{lr:.2e}",
                             tps=str(self.last.get("tokens_per_s", "-")))

    def note(self, record: dict[str, Any]) -> None:
        """A logged record: updates the bar's figures, or prints a line when there is no live bar."""
        self.last.update(record)
        if not self.enabled or self.live:
            if self._bar is not None and "val_loss" in record:
                self._bar.console.print(f"step {record['step']}: validation loss {record['val_loss']:.4f}")
            return
        step = record["step"]
        done = step - self.start_step
        elapsed = time.perf_counter() - self.started
        eta = elapsed / done * (self.total - step) if done > 0 else float("nan")
        if "val_loss" in record:
            line = f"step {step}/{self.total}: validation loss {record['val_loss']:.4f}"
        else:
            line = (f"step {step}/{self.total}  loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
                    f"{record['tokens_per_s']:.0f} tok/s  elapsed {elapsed:.0f}s  ETA {eta:.0f}s")
        print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
