"""Packing and padding: a packed or padded batch computes every example exactly as if it ran
alone, and its loss is the token-weighted loss of the examples."""

from __future__ import annotations

import random

import pytest
import torch

from tunesmith.chat.masking import IGNORE_INDEX
from tunesmith.chat.packing import (
    PackedCollator,
    PackedRowsCollator,
    PaddedCollator,
    first_fit_decreasing,
    pack_examples,
)

from chat_helpers import tiny_llama

VOCAB = 64


def examples(lengths=(7, 12, 3, 9), seed=0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for n in lengths:
        ids = [rng.randrange(1, VOCAB) for _ in range(n)]
        # Train on the second half only, like an answer after a prompt.
        labels = [IGNORE_INDEX] * (n // 2) + ids[n // 2 :]
        out.append({"input_ids": ids, "labels": labels})
    return out


def naive_first_fit_decreasing(lengths, capacity):
    bins, room = [], []
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def test_first_fit_decreasing_by_hand():
    assert first_fit_decreasing([5, 3, 8, 2, 7, 1], 10) == [[2, 3], [4, 1], [0, 5]]
    assert first_fit_decreasing([], 10) == []
    with pytest.raises(ValueError, match="more than the packing capacity"):
        first_fit_decreasing([4, 11], 10)


def test_first_fit_decreasing_matches_the_textbook_algorithm():
    rng = random.Random(1)
    for _ in range(50):
        capacity = rng.randrange(8, 64)
        lengths = [rng.randrange(1, capacity + 1) for _ in range(rng.randrange(1, 80))]
        bins = first_fit_decreasing(lengths, capacity)
        assert bins == naive_first_fit_decreasing(lengths, capacity)
        assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in b) <= capacity for b in bins)


def test_pack_examples_restarts_positions_and_hides_each_first_label():
    rows = pack_examples(examples(), max_length=16)
    assert [len(r["input_ids"]) for r in rows] == [15, 16]  # 12+3, 9+7
    row = rows[0]
    assert row["position_ids"] == list(range(12)) + list(range(3))
    assert row["labels"][0] == IGNORE_INDEX and row["labels"][12] == IGNORE_INDEX


def test_padded_batch_pads_labels_with_ignore_index_to_a_multiple():
    batch = PaddedCollator(pad_token_id=0, pad_to_multiple_of=8)(examples())
    assert batch["input_ids"].shape == (4, 16)
    assert batch["attention_mask"][2].tolist() == [1] * 3 + [0] * 13
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    with pytest.raises(ValueError, match="PackedCollator"):
        PaddedCollator(pad_token_id=0)(pack_examples(examples(), 16))


def test_packed_batch_is_one_row_without_attention_mask():
    batch = PackedCollator()(examples())
    assert batch["input_ids"].shape == batch["labels"].shape == batch["position_ids"].shape == (1, 31)
    assert "attention_mask" not in batch and batch["use_cache"] is False
    flash = PackedCollator(return_flash_attn_kwargs=True)(examples())
    assert flash["cu_seq_lens_q"].tolist() == [0, 7, 19, 22, 31] and flash["max_length_q"] == 12


def _alone_logits(model, example) -> torch.Tensor:
    return model(input_ids=torch.tensor([example["input_ids"]])).logits[0]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("prepacked", [False, True])
def test_packed_logits_equal_each_example_alone(attn, prepacked):
    model = tiny_llama(VOCAB, attn).eval()
    assert model.config.use_cache  # the default that used to make attention leak across examples
    data = examples()
    features = pack_examples(data, 32) if prepacked else data
    batch = PackedCollator()(features)
    lengths = [len(e["input_ids"]) for e in data]
    order = [i for b in first_fit_decreasing(lengths, 32) for i in b] if prepacked else range(len(data))
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        offset = 0
        for i in order:
            alone = _alone_logits(model, data[i])
            torch.testing.assert_close(packed[offset : offset + len(alone)], alone, atol=1e-5, rtol=1e-5)
            offset += len(alone)
    assert offset == packed.shape[0]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padded_logits_equal_each_example_alone(attn):
    model = tiny_llama(VOCAB, attn).eval()
    data = examples()
    batch = PaddedCollator(pad_token_id=0, pad_to_multiple_of=8)(data)
    with torch.no_grad():
        padded = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for row, example in zip(padded, data):
            alone = _alone_logits(model, example)
            torch.testing.assert_close(row[: len(alone)], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("collator", [PackedCollator(), PaddedCollator(pad_token_id=0)])
def test_batch_loss_is_the_token_weighted_loss_of_the_examples(collator):
    model = tiny_llama(VOCAB, "sdpa").eval()
    data = examples()
    with torch.no_grad():
        batch_loss = model(**collator(data)).loss
        total, tokens = 0.0, 0
        for example in data:
            n = sum(label != IGNORE_INDEX for label in example["labels"][1:])
            loss = model(input_ids=torch.tensor([example["input_ids"]]), labels=torch.tensor([example["labels"]])).loss
            total += loss.item() * n
            tokens += n
    assert batch_loss.item() == pytest.approx(total / tokens, abs=1e-5)


def test_packing_hides_a_trained_first_token_from_the_previous_example():
    """With train_on_inputs every label is set; the packed loss must still equal the unpacked one."""
    model = tiny_llama(VOCAB, "eager").eval()
    data = [{"input_ids": e["input_ids"], "labels": list(e["input_ids"])} for e in examples()]
    with torch.no_grad():
        packed_loss = model(**PackedCollator()(data)).loss.item()
        losses = [model(input_ids=torch.tensor([e["input_ids"]]), labels=torch.tensor([e["labels"]])).loss.item()
                  for e in data]
    weights = [len(e["input_ids"]) - 1 for e in data]
    assert packed_loss == pytest.approx(sum(l * w for l, w in zip(losses, weights)) / sum(weights), abs=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_rows_logits_equal_each_example_alone(attn):
    """Rows of different fill, padded: every example still computes as if alone."""
    model = tiny_llama(VOCAB, attn).eval()
    data = examples(lengths=(7, 12, 3, 9, 5, 14, 2))
    rows = pack_examples(data, 16)
    assert len(rows) > 2 and len({len(r["input_ids"]) for r in rows}) > 1  # real padding happens
    batch = PackedRowsCollator(pad_token_id=0, pad_to_multiple_of=8)(rows)
    assert batch["input_ids"].shape == (len(rows), 16) and "attention_mask" not in batch
    lengths = [len(e["input_ids"]) for e in data]
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        for row, members in enumerate(first_fit_decreasing(lengths, 16)):
            offset = 0
            for i in members:
                alone = _alone_logits(model, data[i])
                torch.testing.assert_close(logits[row, offset : offset + len(alone)], alone, atol=1e-5, rtol=1e-5)
                offset += len(alone)
            assert (batch["labels"][row, offset:] == IGNORE_INDEX).all()


def test_packed_rows_loss_is_the_token_weighted_loss_of_the_examples():
    model = tiny_llama(VOCAB, "sdpa").eval()
    data = examples(lengths=(7, 12, 3, 9, 5, 14, 2))
    with torch.no_grad():
        rows_loss = model(**PackedRowsCollator(pad_token_id=0)(pack_examples(data, 16))).loss.item()
        flat_loss = model(**PackedCollator()(data)).loss.item()
    assert rows_loss == pytest.approx(flat_loss, abs=1e-5)
