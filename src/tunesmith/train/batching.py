"""From rows to micro-batches: tokenisation with loss masks, and a deterministic batch plan.

The plan is a pure function of (seed, epoch, step), so a resumed run sees exactly the
micro-batches the interrupted run would have seen, and every rank of a distributed run can
compute its share without communication.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from tunesmith.chat.masking import IGNORE_INDEX, UntrainableConversationError, tokenize_conversation
from tunesmith.chat.packing import PackedCollator, PackedRowsCollator, PaddedCollator, pack_examples
from tunesmith.train.config import TrainSettings
from tunesmith.errors import TrainingError


@dataclass
class TokenizedSet:
    name: str
    examples: list[dict[str, list[int]]]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def notes(self) -> list[str]:
        notes = []
        if self.truncated:
            notes.append(f"{self.name}: {self.truncated} conversations cut after their last whole assistant turn "
                         "to fit train.max_seq_len")
        if self.skipped:
            reasons = Counter(s["reason"] for s in self.skipped)
            notes.append(f"{self.name}: {len(self.skipped)} examples skipped "
                         f"({', '.join(f'{r}: {n}' for r, n in sorted(reasons.items()))}); see skipped_examples.jsonl")
        return notes


def tokenize_rows(rows: list[dict[str, Any]], tokenizer, settings: TrainSettings, name: str) -> TokenizedSet:
    """Tokenise conversations (loss on assistant turns) and plain-text rows (loss on every token)."""
    result = TokenizedSet(name=name, examples=[])
    for index, row in enumerate(rows):
        if "messages" in row and "label" not in row:
            try:
                tok = tokenize_conversation(tokenizer, row["messages"], tools=row.get("tools"),
                                            train_on_inputs=settings.train_on_inputs,
                                            max_length=settings.max_seq_len)
            except UntrainableConversationError as exc:
                result.skipped.append({"split": name, "index": index, "reason": exc.reason,
                                       "message": exc.message, "meta": row.get("meta")})
                continue
            result.truncated += tok.truncated
            result.examples.append({"input_ids": tok.input_ids, "labels": tok.labels})
        elif "text" in row:
            ids = tokenizer(row["text"])["input_ids"] + [tokenizer.eos_token_id]
            # Continued pre-training: long documents become consecutive windows, nothing is cut.
            for start in range(0, len(ids), settings.max_seq_len):
                window = ids[start : start + settings.max_seq_len]
                if len(window) > 1:
                    result.examples.append({"input_ids": window, "labels": list(window)})
        else:
            kind = "preference pairs" if "chosen" in row else "KTO examples" if "label" in row else "unknown rows"
            raise TrainingError(
                f"{name} data holds {kind}; supervised fine-tuning needs conversations (`messages`) or `text`",
                where=str((row.get("meta") or {}).get("source", name)),
                hint="point data.path at SFT data, or set objective: dpo, orpo or simpo (pairs) or kto (labelled rows)",
            )
    if not result.examples:
        raise TrainingError(f"no {name} example is left to train on",
                            hint="run `tunesmith data inspect` on the data to see why")
    return result


@dataclass
class Batch:
    tensors: dict[str, Any]
    num_trained_tokens: int

    def model_inputs(self, device: str) -> dict[str, Any]:
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.tensors.items()}


def _make_batch(features: list[dict[str, list[int]]], packed: bool, pad_id: int, flatten: bool) -> Batch:
    """A flattened micro-batch is its rows' examples as one sequence without padding, the boundaries
    passed along (`cu_seq_lens_*`), for attention that runs each example on its own (varlen flash
    attention, `train/document_attention.py` on CPU): no compute is spent on the ~10% of a row
    that packing leaves empty. Kernels that compute the full masked square are much cheaper on
    separate rows. Either way a micro-batch holds the same examples, so the layout does not change
    which examples a step trains on."""
    if not packed:
        tensors = PaddedCollator(pad_token_id=pad_id)(features)
    elif flatten:
        tensors = PackedCollator(return_flash_attn_kwargs=True)(features)
    else:
        tensors = PackedRowsCollator(pad_token_id=pad_id, pad_to_multiple_of=64)(features)
    trained = int((tensors["labels"][:, 1:] != IGNORE_INDEX).sum())
    return Batch(tensors=tensors, num_trained_tokens=trained)


class BatchPlan:
    """Which micro-batches each optimiser step uses, on each rank, for the whole run."""

    def __init__(self, data: TokenizedSet, settings: TrainSettings, dist, pad_id: int, flatten: bool = False):
        self.data = data
        self.flatten = flatten
        self.settings = settings
        self.rank, self.world = dist.rank, dist.world_size
        self.pad_id = pad_id
        self.per_step = settings.gradient_accumulation_steps * self.world
        self._cached_epoch: int | None = None
        self._units: list[list[dict[str, list[int]]]] = []
        units = len(self._epoch_units(0))
        self.steps_per_epoch = units // self.per_step
        if self.steps_per_epoch == 0:
            raise TrainingError(
                f"{len(data)} training examples make {units} micro-batches, fewer than one optimiser step needs "
                f"(gradient_accumulation_steps × processes = {self.per_step})",
                hint="add data, or lower train.micro_batch_size or train.gradient_accumulation_steps",
            )
        if settings.max_steps:
            self.total_steps = settings.max_steps
        else:
            self.total_steps = max(1, math.ceil(settings.epochs * self.steps_per_epoch))

    def _epoch_units(self, epoch: int) -> list[list[dict[str, list[int]]]]:
        """The epoch's micro-batches as lists of features, shuffled with (seed, epoch)."""
        if self._cached_epoch == epoch:
            return self._units
        rng = random.Random(self.settings.seed * 1_000_003 + epoch)
        order = list(range(len(self.data.examples)))
        rng.shuffle(order)
        shuffled = [self.data.examples[i] for i in order]
        size = self.settings.micro_batch_size
        if self.settings.packing:
            rows = pack_examples(shuffled, self.settings.max_seq_len)
            rng.shuffle(rows)  # packing groups by length; shuffle so batches mix lengths across steps
        else:
            rows = shuffled
        units = [rows[i : i + size] for i in range(0, len(rows) - size + 1, size)]
        self._cached_epoch, self._units = epoch, units
        return units

    @property
    def layout(self) -> str:
        if not self.settings.packing:
            return f"padded micro-batches of {self.settings.micro_batch_size}"
        rows = f"packed micro-batches of {self.settings.micro_batch_size} rows of up to {self.settings.max_seq_len} tokens"
        return rows + (", each micro-batch flattened into one sequence without padding" if self.flatten else "")

    def micro_batches_for_step(self, step: int) -> list[Batch]:
        epoch, k = divmod(step, self.steps_per_epoch)
        units = self._epoch_units(epoch)
        window = units[k * self.per_step : (k + 1) * self.per_step]
        mine = window[self.rank :: self.world]
        return [_make_batch(u, self.settings.packing, self.pad_id, self.flatten) for u in mine]


def eval_batches(data: TokenizedSet, settings: TrainSettings, pad_id: int, dist=None,
                 flatten: bool = False) -> list[Batch]:
    """Validation micro-batches in a fixed order; each rank takes its share."""
    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    rows = pack_examples(data.examples, settings.max_seq_len) if settings.packing else data.examples
    size = settings.micro_batch_size
    units = [rows[i : i + size] for i in range(0, len(rows), size)]
    return [_make_batch(u, settings.packing, pad_id, flatten) for u in units[rank::world]]
