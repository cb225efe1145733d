"""Duplicates are found (exactly and nearly), and the split is seeded, exact and leak-free."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tunesmith.data import split
from tunesmith.data.dedup import Deduplicator, _IdTable, dedup_text, lsh_bands

from data_helpers import chat

def _first_seen(dedup: Deduplicator, rows) -> list:
    results = []
    for i, row in enumerate(rows):
        match, keys = dedup.find(row)
        if match is None:
            dedup.remember(keys, i)
        results.append(match)
    return results


def test_exact_duplicates_ignore_case_whitespace_and_system_prompt():
    rows = [chat("Where is my  order?", "It ships today."),
            chat("where is my order?\n", "It ships TODAY.", system="You are helpful."),
            chat("Where is my order?", "It shipped yesterday.")]
    assert _first_seen(Deduplicator(near=False), rows) == [None, ("duplicate", 0), None]


def _words(seed: int, n: int = 200) -> list[str]:
    rng = random.Random(seed)
    return [f"w{rng.randrange(5000)}" for _ in range(n)]


def test_near_duplicates_by_threshold():
    # MinHash-LSH is probabilistic; these pairs sit far from the thresholds tested (Jaccard of
    # word 3-grams: one changed word in 200 ~ 0.97, every tenth word changed ~ 0.5), so the
    # chance of a different answer is below 0.1%, and with fixed hashing it never changes.
    words = _words(1)
    one_word = words.copy()
    one_word[100] = "changed"
    tenth = [w if i % 10 else "other" for i, w in enumerate(words)]
    rows = [chat(" ".join(words), "Sorry."), chat(" ".join(one_word), "Sorry."),
            chat(", ".join(words).upper(), "Sorry!"), chat(" ".join(tenth), "Sorry."),
            chat(" ".join(_words(2)), "Sorry.")]
    assert _first_seen(Deduplicator(threshold=0.85), rows) == [
        None, ("near_duplicate", 0), ("near_duplicate", 0), None, None]
    loose = _first_seen(Deduplicator(threshold=0.3), rows)
    assert loose[3] == ("near_duplicate", 0) and loose[4] is None
    # Only exact copies (up to case and whitespace) without near-duplicate detection.
    assert _first_seen(Deduplicator(near=False), rows) == [None, None, None, None, None]


def test_dedup_text_separates_fields_and_kinds():
    pair = {"prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "assistant", "content": "A"}],
            "rejected": [{"role": "assistant", "content": "B"}]}
    swapped = {**pair, "chosen": pair["rejected"], "rejected": pair["chosen"]}
    assert dedup_text(pair) != dedup_text(swapped)
    labelled = {"messages": chat("q", "a")["messages"], "label": True}
    assert dedup_text(labelled) != dedup_text({**labelled, "label": False})


def test_lsh_bands_fit_the_permutations():
    for threshold in (0.5, 0.7, 0.85, 0.95):
        bands, rows = lsh_bands(threshold, 128)
        assert bands * rows <= 128
        # the S-curve's midpoint (1/b)^(1/r) sits near the threshold
        assert abs((1 / bands) ** (1 / rows) - threshold) < 0.1


def test_id_table_survives_growth():
    table = _IdTable(capacity=8)
    rng = random.Random(0)
    keys = [rng.getrandbits(64) | 1 for _ in range(5000)]
    for i, key in enumerate(keys):
        table.put(key, i)
    assert all(table.get(key) == i for i, key in enumerate(keys))
    assert table.get(2) is None and table.size == 5000


def test_split_is_seeded_and_exact():
    n = 1000
    groups, strata = list(range(n)), [0] * n
    a = split.assign(groups, strata, val=0.1, test=0.05, seed=1)
    assert a == split.assign(groups, strata, val=0.1, test=0.05, seed=1)
    assert a != split.assign(groups, strata, val=0.1, test=0.05, seed=2)
    assert Counter(a) == {0: 850, 1: 100, 2: 50}


@pytest.mark.parametrize("n, val, test, expected", [(10, 0.05, 0.05, (1, 1)), (1, 0.05, 0.05, (0, 0)),
                                                     (3, 0.5, 0.5, (1, 2)), (100, 0.0, 0.1, (0, 10))])
def test_target_counts(n, val, test, expected):
    assert split.target_counts(n, val, test) == expected


def test_groups_of_copies_never_straddle_splits():
    rng = random.Random(3)
    groups = []
    for i in range(2000):
        groups.append(groups[rng.randrange(i)] if i and rng.random() < 0.3 else i)
    assignment = split.assign(groups, [0] * len(groups), val=0.1, test=0.1, seed=5)
    by_group: dict[int, set[int]] = {}
    for example, group in enumerate(groups):
        by_group.setdefault(group, set()).add(assignment[example])
    assert all(len(splits) == 1 for splits in by_group.values())
    counts = Counter(assignment)
    assert abs(counts[2] - 200) < 20 and abs(counts[1] - 200) < 20


def test_stratified_split_keeps_each_stratum_share():
    strata = [0] * 900 + [1] * 100
    assignment = split.assign(list(range(1000)), strata, val=0.1, test=0.1, seed=0)
    minority = Counter(assignment[900:])
    assert minority == {0: 80, 1: 10, 2: 10}
    assert Counter(assignment[:900]) == {0: 720, 1: 90, 2: 90}
