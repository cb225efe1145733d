"""Exact and near-duplicate detection over a stream of examples.

Exact: a 64-bit hash of the example's text, lower-cased and with whitespace collapsed.
Near: MinHash signatures over word n-grams, banded for locality-sensitive hashing; an example
whose signature shares a band with an earlier one is a near duplicate. The signature is computed
here in NumPy (multiply-shift permutations of 64-bit shingle hashes, all permutations of a
chunk of shingles in one array operation), which is several times faster per example than
datasketch's `MinHash.update_batch` and avoids importing datasketch and SciPy at all.

System prompts are left out of the compared text: a dataset that shares one system prompt
would otherwise make every pair of short examples look alike, and the same question and answer
under two system prompts is still the same example for leakage between splits.

This is the main state of the data stage that grows with the input. It is kept compact: one
12-byte slot per band and per exact hash in a flat hash table at most half full, 0.2 to 0.4 KB
per example with the default 8 bands, where datasketch's `MinHashLSH` keeps each band as a bytes
object in a per-bucket set (about 3 KB).
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from array import array
from functools import lru_cache
from typing import Any

import numpy as np

from tunesmith.data.schema import kind_of

# Odd 64-bit multipliers for multiply-add folds (word hashes into a shingle hash, a band of
# MinHash values into one key). Derived from BLAKE2b rather than a NumPy generator, whose
# streams may change between NumPy versions: the same data must give the same decisions.
_FOLD = np.array([int.from_bytes(hashlib.blake2b(i.to_bytes(4, "little"), digest_size=8).digest(), "little") | 1
                  for i in range(1024)], dtype=np.uint64)
# Multiply-shift permutations: value -> high 32 bits of (a * value + b) mod 2^64, a odd. The
# same derivation as _FOLD with another personalisation, so no two tables share numbers.
_PERMUTE_A = np.array([int.from_bytes(hashlib.blake2b(i.to_bytes(4, "little"), digest_size=8, person=b"perm-a")
                                      .digest(), "little") | 1 for i in range(1024)], dtype=np.uint64)
_PERMUTE_B = np.array([int.from_bytes(hashlib.blake2b(i.to_bytes(4, "little"), digest_size=8, person=b"perm-b")
                                      .digest(), "little") for i in range(1024)], dtype=np.uint64)
# Shingles per array operation: bounds the (permutations x shingles) array at 4 MiB for 128
# permutations, whatever the length of one example.
_SHINGLE_CHUNK = 4096
# Near-duplicate shingles are made of words only, so punctuation changes do not hide a copy.
_WORD = re.compile(r"\w+")
# Words whose hashes are cached; natural text reuses a small vocabulary, so a bounded cache
# saves most of the hashing without growing with the input.
_WORD_CACHE = 1 << 18


def minhash_signature(shingles: np.ndarray, num_perm: int) -> np.ndarray:
    """The MinHash signature of a set of 64-bit shingle hashes: for each of `num_perm`
    permutations, the least permuted value (its high 32 bits, in uint64)."""
    a, b = _PERMUTE_A[:num_perm], _PERMUTE_B[:num_perm]
    least = np.full(num_perm, np.iinfo(np.uint64).max, dtype=np.uint64) if not len(shingles) else None
    with np.errstate(over="ignore"):
        for start in range(0, len(shingles), _SHINGLE_CHUNK):
            # (shingles, permutations): the minimum runs down the rows, across all permutations
            # at once, which measured faster than the transposed layout.
            permuted = np.multiply.outer(shingles[start : start + _SHINGLE_CHUNK], a)
            permuted += b
            chunk_least = permuted.min(axis=0)
            least = chunk_least if least is None else np.minimum(least, chunk_least)
    # Taking the high bits after the minimum is the same as before it (the shift is monotone).
    return least >> np.uint64(32)


def dedup_text(row: dict[str, Any]) -> str:
    """The text two examples are compared on: every non-system turn, normalised."""
    kind = kind_of(row)
    if kind == "text":
        parts = [row["text"]]
    else:
        fields = ("prompt", "chosen", "rejected") if kind == "preference" else ("messages",)
        parts = []
        for field in fields:
            for message in row[field]:
                if message["role"] == "system":
                    continue
                parts.append(f"{field}/{message['role']}: {message['content']}")
                if message.get("tool_calls"):
                    parts.append(json.dumps(message["tool_calls"], sort_keys=True, ensure_ascii=False))
        if kind == "kto":
            parts.append(f"label: {row['label']}")
    return " ".join(" ".join(parts).lower().split())


@lru_cache(maxsize=None)
def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) minimising the false-positive plus false-negative area around
    `threshold`, the criterion datasketch's MinHashLSH uses."""
    similarity = np.linspace(0.0, 1.0, 2001)
    below, above = similarity <= threshold, similarity >= threshold
    best, best_error = (1, num_perm), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            collide = 1.0 - (1.0 - similarity**rows) ** bands
            error = np.trapezoid(collide[below], similarity[below]) + np.trapezoid(1.0 - collide[above], similarity[above])
            if error < best_error:
                best, best_error = (bands, rows), error
    return best


class _IdTable:
    """Open-addressing hash table from nonzero 64-bit keys to example ids.

    Two flat arrays (12 bytes a slot, at most half full) instead of a dict, whose boxed ints
    take about ten times the memory; `array` rather than NumPy because single-element access
    from Python is several times faster on it.
    """

    def __init__(self, capacity: int = 1 << 16):
        self.keys = array("Q", bytes(8 * capacity))
        self.values = array("I", bytes(4 * capacity))
        self.size = 0

    def _slot(self, key: int) -> int:
        keys, mask = self.keys, len(self.keys) - 1
        slot = ((key * 0x9E3779B97F4A7C15) >> 20) & mask
        while keys[slot] and keys[slot] != key:
            slot = (slot + 1) & mask
        return slot

    def get(self, key: int) -> int | None:
        return self.first([key])

    def first(self, keys: list[int]) -> int | None:
        """The value of the first of `keys` that is in the table (the probing of `_slot`, inlined:
        this runs for every key of every example)."""
        table, mask = self.keys, len(self.keys) - 1
        for key in keys:
            slot = ((key * 0x9E3779B97F4A7C15) >> 20) & mask
            while found := table[slot]:
                if found == key:
                    return self.values[slot]
                slot = (slot + 1) & mask
        return None

    def put(self, key: int, value: int) -> None:
        slot = self._slot(key)
        if not self.keys[slot]:
            self.size += 1
        self.keys[slot], self.values[slot] = key, value
        if self.size * 2 > len(self.keys):
            self._grow()

    def _grow(self) -> None:
        old_keys, old_values = self.keys, self.values
        self.keys = array("Q", bytes(16 * len(old_keys)))
        self.values = array("I", bytes(8 * len(old_keys)))
        for key, value in zip(old_keys, old_values):
            if key:
                slot = self._slot(key)
                self.keys[slot], self.values[slot] = key, value

    @property
    def nbytes(self) -> int:
        return len(self.keys) * (self.keys.itemsize + self.values.itemsize)


class Deduplicator:
    """Remembers the examples seen so far and says which earlier one a new example repeats."""

    def __init__(self, *, near: bool = True, threshold: float = 0.85, num_perm: int = 128, shingle_words: int = 3):
        self.near = near
        self.num_perm = num_perm
        self.shingle_words = shingle_words
        self.bands, self.rows = lsh_bands(threshold, num_perm)
        self._table = _IdTable()
        self._word_hashes: dict[str, int] = {}

    @staticmethod
    def _exact_key(text: str) -> int:
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, person=b"exact").digest()
        return int.from_bytes(digest, "little") | 1

    def _band_keys(self, text: str) -> list[int]:
        words = _WORD.findall(text) or [""]
        # A shingle's hash is a multiply-add fold of its words' CRC32s: NumPy does the n-gram
        # arithmetic, so only one C call per word runs in Python (hashing every shingle with
        # SHA-1 took most of the stage's time).
        cache = self._word_hashes
        if len(cache) > _WORD_CACHE:
            cache.clear()
        hashes = np.array([cache.get(w) or cache.setdefault(w, zlib.crc32(w.encode("utf-8")) | 1) for w in words],
                          dtype=np.uint64)
        n = min(self.shingle_words, len(words))
        count = len(words) - n + 1
        with np.errstate(over="ignore"):
            folded = np.zeros(count, dtype=np.uint64)
            for j in range(n):
                folded = folded + hashes[j : j + count] * _FOLD[j]
        signature = minhash_signature(folded, self.bands * self.rows)
        values = signature.reshape(self.bands, self.rows)
        with np.errstate(over="ignore"):
            band = (values * _FOLD[: self.rows]).sum(axis=1, dtype=np.uint64)
            # Mix in the band number so equal values in two different bands do not collide.
            band = band * np.uint64(0xFF51AFD7ED558CCD) + np.arange(1, self.bands + 1, dtype=np.uint64)
        return [key | 1 for key in band.tolist()]

    def find(self, row: dict[str, Any]) -> tuple[tuple[str, int] | None, list[int]]:
        """(("duplicate" or "near_duplicate", id of the earlier example) or None, the row's keys).

        Pass the keys to `remember` once the example is kept, so later copies point at it.
        Copies are not remembered themselves, so every copy points at the first one.
        """
        text = dedup_text(row)
        exact = self._exact_key(text)
        earlier = self._table.get(exact)
        if earlier is not None:
            return ("duplicate", earlier), []
        band_keys = self._band_keys(text) if self.near else []
        earlier = self._table.first(band_keys)
        if earlier is not None:
            return ("near_duplicate", earlier), []
        return None, [exact, *band_keys]

    def remember(self, keys: list[int], example_id: int) -> None:
        for key in keys:
            self._table.put(key, example_id)

    @property
    def nbytes(self) -> int:
        return self._table.nbytes
