"""`TrainState`: everything about a run's progress that a checkpoint must restore besides the
weights, the optimiser and the random generators."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class TrainState:
    #: optimiser steps taken; the batch plan derives the data position from it.
    step: int = 0
    #: tokens that carried loss so far, over every process.
    trained_tokens: int = 0
    #: early stopping: best validation loss, the step it was reached, evaluations since.
    best_val_loss: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    #: 1-based steps whose update was skipped for a non-finite loss or gradient norm.
    skipped_steps: list[int] = field(default_factory=list)
    #: filled at the end of a multi-process run: world size, strategy, whether ranks agree.
    distributed: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "TrainState":
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        # Checkpoints written before a field existed resume with its default.
        return cls(**{k: v for k, v in data.items() if k in known})

    def record_evaluation(self, val_loss: float) -> bool:
        """Count a validation result for early stopping; True when it is the best so far."""
        if self.best_val_loss is None or val_loss < self.best_val_loss:
            self.best_val_loss, self.best_step, self.bad_evals = val_loss, self.step, 0
            return True
        self.bad_evals += 1
        return False
