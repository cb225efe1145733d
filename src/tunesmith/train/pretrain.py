"""Continued pre-training: `objective: pretrain`.

Plain-text rows (`{"text": ...}`) are the corpus: each document is tokenised with EOS appended,
long documents become consecutive windows of `train.max_seq_len` tokens, and packing (on by
default) fills rows with several documents or windows whose positions restart, so attention
never crosses documents; every token carries loss. Conversations in the same data are the SFT
part of a mix: with `data.mix_ratio: R` they are drawn (deterministically, repeating or
subsampling) so that R of the trained tokens come from them, with SFT's loss masks; without
it, conversations in pretrain data are refused.
"""

from __future__ import annotations

import random
from typing import Any

from tunesmith.train.config import TrainConfig
from tunesmith.errors import TrainingError
from tunesmith.train import batching
from tunesmith.train.sft import SupervisedObjective


def _trained(example: dict[str, list[int]]) -> int:
    return sum(1 for t in example["labels"][1:] if t != -100)


class PretrainObjective(SupervisedObjective):
    name = "pretrain"

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg.train)
        self.mix_ratio = cfg.data.mix_ratio

    def tokenize(self, rows: list[dict[str, Any]], tokenizer, split: str) -> batching.TokenizedSet:
        text = [r for r in rows if "text" in r]
        chats = [r for r in rows if "messages" in r and "label" not in r]
        other = len(rows) - len(text) - len(chats)
        if other:
            raise TrainingError(f"{split} data holds {other} rows that are neither text nor conversations",
                                hint="objective: pretrain trains on {\"text\": ...} rows (and conversations with "
                                     "data.mix_ratio)")
        if not text:
            raise TrainingError(f"{split} data holds no plain-text rows; objective: pretrain needs a corpus",
                                hint="give {\"text\": ...} rows, or use objective: sft for conversations")
        if chats and self.mix_ratio is None:
            raise TrainingError(
                f"{split} data mixes {len(text)} text rows with {len(chats)} conversations but data.mix_ratio is unset",
                hint="set data.mix_ratio (the share of trained tokens from conversations, e.g. 0.2), "
                     "or give text rows only")
        corpus = batching.tokenize_rows(text, tokenizer, self.settings, split)
        if not chats or not self.mix_ratio:
            return corpus
        conversations = batching.tokenize_rows(chats, tokenizer, self.settings, split)
        corpus_tokens = sum(_trained(e) for e in corpus.examples)
        wanted = self.mix_ratio / (1.0 - self.mix_ratio) * corpus_tokens
        rng = random.Random(self.settings.seed * 7_919 + len(split))
        chosen, tokens = [], 0
        while tokens < wanted:
            order = list(range(len(conversations.examples)))
            rng.shuffle(order)
            for i in order:
                if tokens >= wanted:
                    break
                chosen.append(conversations.examples[i])
                tokens += _trained(conversations.examples[i])
        corpus.examples += chosen
        corpus.skipped += conversations.skipped
        corpus.truncated += conversations.truncated
        self.mix = {"corpus_tokens": corpus_tokens, "conversation_tokens": tokens,
                    "conversation_share": tokens / max(tokens + corpus_tokens, 1)}
        return corpus
