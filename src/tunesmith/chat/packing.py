"""Batching tokenized examples: padded batches, and packed (padding-free) batches.

Packing puts several examples in one row so no compute is spent on padding. It is only correct
if every example is computed as if it were alone: attention must not cross example boundaries,
positions must restart at 0 for each example, and the first token of an example must not be a
training target predicted from the end of the previous one. `PackedCollator` produces such
batches for transformers' attention implementations:

- `position_ids` restart at 0 for every example and no `attention_mask` is given, which is how
  transformers' `masking_utils` (5.x) recognises packed sequences and builds a block-diagonal
  causal mask (sdpa, eager, flex) or variable-length kernels (flash attention);
- `use_cache=False` is part of the batch, because `masking_utils` only looks for packed
  sequences when no KV cache is passed, and a model whose config has `use_cache=True` creates
  one even in training; without it attention silently leaks across examples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DataCollatorWithFlattening

from tunesmith.chat.masking import IGNORE_INDEX


def _as_list(values) -> list[int]:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group example indices into bins of total length at most `capacity`.

    First-fit decreasing: examples are taken longest first (ties by index, so the result is
    deterministic) and each goes into the first bin with room. Bins are returned in the order
    they were opened, their indices in the order they were placed. A max segment tree over bin
    free space finds the first bin with room in O(log n), which keeps packing 100k examples fast.
    """
    if capacity < 1:
        raise ValueError(f"packing capacity must be at least 1, got {capacity}")
    for i, length in enumerate(lengths):
        if length > capacity:
            raise ValueError(
                f"example {i} has {length} tokens, more than the packing capacity {capacity}; "
                "truncate examples (tokenize_conversation's max_length) before packing"
            )
    size = 1
    while size < max(1, len(lengths)):
        size *= 2
    # Leaf b holds the free space of bin b; bins not opened yet have the whole capacity free, so
    # the leftmost leaf with enough room is an open bin when one fits and the next new bin if not.
    free = [0] * size + [capacity] * len(lengths) + [0] * (size - len(lengths))
    for node in range(size - 1, 0, -1):
        free[node] = max(free[2 * node], free[2 * node + 1])
    bins: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        node = 1
        while node < size:
            node = 2 * node if free[2 * node] >= lengths[i] else 2 * node + 1
        b = node - size
        if b == len(bins):
            bins.append([])
        bins[b].append(i)
        free[node] -= lengths[i]
        node //= 2
        while node:
            free[node] = max(free[2 * node], free[2 * node + 1])
            node //= 2
    return bins


def pack_examples(examples: Sequence[Mapping[str, Any]], max_length: int) -> list[dict[str, list[int]]]:
    """Pack tokenized examples (`input_ids`, `labels`) into rows of at most `max_length` tokens.

    Each row holds `input_ids`, `labels` and `position_ids`; positions restart at 0 for every
    example, which is how `PackedCollator` and transformers find the boundaries again, and the
    label of every example's first token is `IGNORE_INDEX` (it would otherwise be predicted from
    the previous example's last token).
    """
    lengths = [len(example["input_ids"]) for example in examples]
    rows = []
    for members in first_fit_decreasing(lengths, max_length):
        row: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
        for i in members:
            ids = _as_list(examples[i]["input_ids"])
            labels = _as_list(examples[i].get("labels", ids))
            row["input_ids"] += ids
            row["labels"] += [IGNORE_INDEX] + labels[1:]
            row["position_ids"] += list(range(len(ids)))
        rows.append(row)
    return rows


def _split_packed(feature: Mapping[str, Any]) -> list[dict[str, list[int]]]:
    ids = _as_list(feature["input_ids"])
    labels = _as_list(feature["labels"]) if "labels" in feature else ids
    if "position_ids" not in feature:
        return [{"input_ids": ids, "labels": labels}]
    positions = _as_list(feature["position_ids"])
    starts = [j for j, p in enumerate(positions) if p == 0] + [len(ids)]
    if starts[0] != 0:
        raise ValueError("a packed row's position_ids must start at 0")
    return [{"input_ids": ids[a:b], "labels": labels[a:b]} for a, b in zip(starts, starts[1:])]


@dataclass
class PackedCollator:
    """Flatten a batch of examples (or of packed rows from `pack_examples`) into one row.

    Returns `input_ids`, `labels` and `position_ids` of shape (1, total tokens) with no padding and
    no attention mask, plus `use_cache=False` (see the module docstring). With
    `return_flash_attn_kwargs`, also the cumulative sequence lengths flash attention uses.
    Labels at every example's first token are `IGNORE_INDEX`.
    """

    return_flash_attn_kwargs: bool = False

    def __post_init__(self):
        # transformers' flattening collator does the concatenation; rows packed ahead of time are
        # split back into their examples first because it treats each feature as one sequence.
        self._flatten = DataCollatorWithFlattening(return_flash_attn_kwargs=self.return_flash_attn_kwargs)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        sequences = [sequence for feature in features for sequence in _split_packed(feature)]
        batch = dict(self._flatten(sequences, return_tensors="pt"))
        batch["use_cache"] = False
        return batch


@dataclass
class PackedRowsCollator:
    """Keep packed rows (from `pack_examples`) as separate batch rows, padded to the longest.

    Attention implementations that compute the whole masked score matrix (sdpa and eager, as on
    CPU) pay for the square of the row length; flattening a micro-batch of 8 rows of 512 tokens
    into one row of 4096 costs 8 times the attention work of 8 rows, so this layout is the fast
    one there, while varlen flash attention prefers `PackedCollator`. A row's padding forms a
    segment of its own (its positions restart at 0), so no real token attends to it, and it
    carries no loss. Plain examples are accepted too and become one-segment rows. Widths are
    rounded up to `pad_to_multiple_of`, so kernels see a few shapes rather than a new one per step.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        rows = []
        for feature in features:
            ids = _as_list(feature["input_ids"])
            labels = _as_list(feature["labels"]) if "labels" in feature else list(ids)
            if "position_ids" in feature:
                positions = _as_list(feature["position_ids"])
            else:
                positions, labels = list(range(len(ids))), [IGNORE_INDEX] + labels[1:]
            rows.append((ids, labels, positions))
        width = max(len(ids) for ids, _, _ in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch: dict[str, Any] = {
            "input_ids": torch.tensor([ids + [self.pad_token_id] * (width - len(ids)) for ids, _, _ in rows]),
            "labels": torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for _, lab, _ in rows]),
            "position_ids": torch.tensor([pos + list(range(width - len(pos))) for _, _, pos in rows]),
        }
        batch["use_cache"] = False
        return batch


@dataclass
class PaddedCollator:
    """Pad a batch on the right to its longest example (optionally to a multiple of N).

    Padding gets `pad_token_id` in `input_ids`, 0 in `attention_mask` and `IGNORE_INDEX` in
    `labels`, so it is neither attended to nor trained. Features without `labels` are trained on
    every token. Rows packed by `pack_examples` are refused: padding them would lose their
    example boundaries; use `PackedCollator` for those.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if any("position_ids" in feature for feature in features):
            raise ValueError("PaddedCollator got packed rows (with position_ids); use PackedCollator")
        ids = [_as_list(f["input_ids"]) for f in features]
        labels = [_as_list(f["labels"]) if "labels" in f else list(i) for f, i in zip(features, ids)]
        width = max(len(i) for i in ids)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        return {
            "input_ids": torch.tensor([i + [self.pad_token_id] * (width - len(i)) for i in ids]),
            "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids]),
            "labels": torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for lab in labels]),
        }


__all__ = ["PackedCollator", "PackedRowsCollator", "PaddedCollator", "first_fit_decreasing", "pack_examples"]
