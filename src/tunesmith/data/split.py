"""Seeded, deterministic train/val/test assignment that never splits a group of copies.

Examples are assigned by group: an example and the copies kept with it (`dedup.keep`) form one
group, and a group goes to one split as a whole, so no duplicate or near-duplicate can appear
in two splits. With duplicate removal on (the default) every group is a single example.

Within each stratum (every value of `split.stratify_by`, or the whole dataset), the groups are
shuffled with the seed and dealt out until test and val hold their share, rounded to the
nearest example; the rest is train. The counts are exact rather than drawn at random, so a
small dataset's 5% test split is never empty by bad luck.
"""

from __future__ import annotations

import math
import random
from array import array
from typing import Sequence

SPLITS: tuple[str, ...] = ("train", "val", "test")


def target_counts(n: int, val: float, test: float) -> tuple[int, int]:
    """(val, test) example counts for `n` examples: shares rounded half up, train keeps the rest."""
    n_test = min(n, math.floor(n * test + 0.5))
    n_val = min(n - n_test, math.floor(n * val + 0.5))
    return n_val, n_test


def assign(groups: Sequence[int], strata: Sequence[int], *, val: float, test: float, seed: int) -> bytearray:
    """Index into SPLITS for each example; `groups[i]` is the group of example i (the id of its
    first member), `strata[i]` its stratum."""
    # Flat arrays indexed by example id (a group's id is its first member's), not dicts: this
    # runs once over every kept example and should cost bytes per example, not a hundred.
    sizes = array("I", bytes(4 * len(groups)))
    for group in groups:
        sizes[group] += 1
    by_stratum: dict[int, list[int]] = {}
    for example, group in enumerate(groups):
        if group == example:  # the first member stands for the group
            by_stratum.setdefault(strata[example], []).append(group)
    rng = random.Random(seed)
    split_of_group = bytearray(len(groups))
    for stratum in sorted(by_stratum):
        members = by_stratum[stratum]
        rng.shuffle(members)
        n_val, n_test = target_counts(sum(sizes[g] for g in members), val, test)
        filled = [0, 0, 0]
        for group in members:
            if filled[2] < n_test:
                split = 2
            elif filled[1] < n_val:
                split = 1
            else:
                split = 0
            split_of_group[group] = split
            filled[split] += sizes[group]
    return bytearray(split_of_group[group] for group in groups)
