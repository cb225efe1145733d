"""The MinHash signature behind near-duplicate removal: the share of equal signature positions
estimates the Jaccard similarity of two shingle sets, and long examples give the same signature
whatever the chunk size that bounds its memory."""

from __future__ import annotations

import numpy as np
import pytest

from tunesmith.data import dedup
from tunesmith.data.dedup import minhash_signature


def _sets_with_jaccard(jaccard: float, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two sets of distinct 64-bit values with |A & B| / |A | B| = jaccard."""
    union = rng.choice(np.iinfo(np.int64).max, size=size, replace=False).astype(np.uint64)
    shared = round(jaccard * size)
    only = (size - shared) // 2
    a = union[: shared + only]
    b = np.concatenate([union[:shared], union[shared + only : shared + 2 * only]])
    return a, b


@pytest.mark.parametrize("jaccard", [0.0, 0.3, 0.6, 0.85, 1.0])
def test_equal_positions_estimate_the_jaccard_similarity(jaccard):
    rng = np.random.default_rng(7)
    a, b = _sets_with_jaccard(jaccard, 2000, rng)
    true = len(np.intersect1d(a, b)) / len(np.union1d(a, b))
    estimate = float(np.mean(minhash_signature(a, 1024) == minhash_signature(b, 1024)))
    sigma = max(np.sqrt(true * (1 - true) / 1024), 1e-3)
    assert abs(estimate - true) <= 5 * sigma, (estimate, true)


def test_the_signature_is_a_set_function_and_32_bit():
    rng = np.random.default_rng(3)
    values = rng.integers(0, np.iinfo(np.int64).max, size=300).astype(np.uint64)
    shuffled_with_repeats = np.concatenate([values[::-1], values[:50]])
    signature = minhash_signature(values, 128)
    assert np.array_equal(signature, minhash_signature(shuffled_with_repeats, 128))
    assert signature.max() < 2**32


def test_chunking_a_long_example_does_not_change_its_signature(monkeypatch):
    rng = np.random.default_rng(5)
    values = rng.integers(0, np.iinfo(np.int64).max, size=10_000).astype(np.uint64)
    whole = minhash_signature(values, 64)
    monkeypatch.setattr(dedup, "_SHINGLE_CHUNK", 7)
    assert np.array_equal(minhash_signature(values, 64), whole)
