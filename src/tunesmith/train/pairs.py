"""Preference data as model inputs: pairs (prompt, chosen, rejected) and KTO rows (prompt,
completion, label), tokenised through the model's chat template with the shared masking code,
and a deterministic plan of micro-batches.

A completion is rendered as the assistant turn(s) after its prompt, exactly as SFT renders a
conversation (`tokenize_conversation`): the labels cover the completion's tokens and its
end-of-turn / EOS token, nothing of the prompt (earlier assistant turns of a multi-turn prompt
get weight 0). Sequence log-probabilities are sums over exactly those labelled tokens.

A micro-batch of n pairs is one padded batch of 2n rows, the n chosen then the n rejected, so
both completions of a pair go through the same forward pass; every row is one sequence with its
own attention mask, so no attention crosses examples.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from tunesmith.chat.masking import UntrainableConversationError, tokenize_conversation
from tunesmith.chat.packing import PaddedCollator
from tunesmith.train.config import TrainSettings
from tunesmith.errors import TrainingError


@dataclass
class PreferenceSet:
    name: str
    kind: str  # "pairs" or "kto"
    examples: list[dict[str, Any]]
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def notes(self) -> list[str]:
        if not self.skipped:
            return []
        reasons = Counter(s["reason"] for s in self.skipped)
        return [f"{self.name}: {len(self.skipped)} examples skipped "
                f"({', '.join(f'{r}: {n}' for r, n in sorted(reasons.items()))}); see skipped_examples.jsonl"]


def _prompt_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A prompt's messages with no loss on any of them (earlier assistant turns included)."""
    return [{**m, "weight": 0} if m.get("role") == "assistant" else dict(m) for m in messages]


def tokenize_completion(tokenizer, prompt: list[dict[str, Any]], completion: list[dict[str, Any]],
                        max_length: int, tools=None) -> dict[str, list[int]]:
    """input_ids and labels (IGNORE_INDEX outside the completion) of prompt + completion."""
    tok = tokenize_conversation(tokenizer, _prompt_messages(prompt) + [dict(m) for m in completion],
                                tools=tools, max_length=max_length)
    if tok.truncated:
        raise UntrainableConversationError(
            "too_long", f"prompt and completion do not fit in max_seq_len {max_length}",
            hint="raise train.max_seq_len or shorten the example")
    return {"input_ids": tok.input_ids, "labels": tok.labels}


def split_kto_row(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(prompt, completion): the completion is the trailing assistant message(s)."""
    end = len(messages)
    start = end
    while start > 0 and messages[start - 1].get("role") == "assistant":
        start -= 1
    return messages[:start], messages[start:]


def tokenize_preference_rows(rows: list[dict[str, Any]], tokenizer, settings: TrainSettings, name: str,
                             kind: str) -> PreferenceSet:
    """Tokenise pairs (`kind="pairs"`) or KTO rows (`kind="kto"`); refuses rows of another kind."""
    result = PreferenceSet(name=name, kind=kind, examples=[])
    for index, row in enumerate(rows):
        _check_kind(row, kind, name)
        try:
            if kind == "pairs":
                chosen = tokenize_completion(tokenizer, row["prompt"], row["chosen"], settings.max_seq_len,
                                             row.get("tools"))
                rejected = tokenize_completion(tokenizer, row["prompt"], row["rejected"], settings.max_seq_len,
                                               row.get("tools"))
                result.examples.append({"chosen": chosen, "rejected": rejected, "index": index})
            else:
                prompt, completion = split_kto_row(row["messages"])
                tok = tokenize_completion(tokenizer, prompt, completion, settings.max_seq_len, row.get("tools"))
                result.examples.append({"completion": tok, "prompt": prompt, "completion_messages": completion,
                                        "label": bool(row["label"]), "index": index, "tools": row.get("tools")})
        except UntrainableConversationError as exc:
            result.skipped.append({"split": name, "index": index, "reason": exc.reason, "message": exc.message,
                                   "meta": row.get("meta")})
    if not result.examples:
        raise TrainingError(f"no {name} example is left to train on",
                            hint="run `tunesmith data inspect` on the data to see why")
    return result


def _check_kind(row: dict[str, Any], kind: str, split: str) -> None:
    is_pair = "chosen" in row and "rejected" in row
    is_kto = "label" in row and "messages" in row
    if (kind == "pairs" and is_pair) or (kind == "kto" and is_kto):
        return
    held = "preference pairs" if is_pair else "KTO rows" if is_kto else "conversations" if "messages" in row \
        else "plain text" if "text" in row else "unknown rows"
    wanted = "preference pairs (prompt/chosen/rejected)" if kind == "pairs" else "KTO rows (messages + label)"
    raise TrainingError(
        f"{split} data holds {held}; this objective needs {wanted}",
        where=str((row.get("meta") or {}).get("source", split)),
        hint="objective: dpo, orpo and simpo train on pairs, kto on labelled rows, sft on conversations")


# --------------------------------------------------------------------------- batches


@dataclass
class PairBatch:
    """`tensors`: padded rows (chosen first, then rejected for pairs); `indices`: dataset indices."""

    tensors: dict[str, torch.Tensor]
    indices: list[int]
    num_examples: int
    num_trained_tokens: int
    #: which split's reference table `indices` point into (precomputed references)
    split: str = "train"
    labels_desirable: torch.Tensor | None = None
    #: KTO: mismatched (prompt, completion) rows for the KL estimate, padded.
    kl_tensors: dict[str, torch.Tensor] | None = None

    def model_inputs(self, device: str) -> dict[str, Any]:
        return {k: v.to(device) for k, v in self.tensors.items()}


def make_pair_batch(examples: list[dict[str, Any]], pad_id: int, split: str = "train") -> PairBatch:
    features = [e["chosen"] for e in examples] + [e["rejected"] for e in examples]
    tensors = PaddedCollator(pad_token_id=pad_id)(features)
    trained = int((tensors["labels"][:, 1:] != -100).sum())
    return PairBatch(tensors=tensors, indices=[e["index"] for e in examples], num_examples=len(examples),
                     num_trained_tokens=trained, split=split)


def make_kto_batch(examples: list[dict[str, Any]], kl_features: list[dict[str, list[int]]], pad_id: int) -> PairBatch:
    tensors = PaddedCollator(pad_token_id=pad_id)([e["completion"] for e in examples])
    trained = int((tensors["labels"][:, 1:] != -100).sum())
    return PairBatch(tensors=tensors, indices=[e["index"] for e in examples], num_examples=len(examples),
                     num_trained_tokens=trained,
                     labels_desirable=torch.tensor([e["label"] for e in examples], dtype=torch.bool),
                     kl_tensors=PaddedCollator(pad_token_id=pad_id)(kl_features) if kl_features else None)


class PreferencePlan:
    """Which examples each optimiser step uses, on each rank: a pure function of (seed, epoch,
    step), so a resumed run sees exactly the batches the interrupted one would have seen."""

    def __init__(self, data: PreferenceSet, settings: TrainSettings, dist, pad_id: int, tokenizer=None):
        self.data = data
        self.settings = settings
        self.rank, self.world = dist.rank, dist.world_size
        self.pad_id = pad_id
        self.tokenizer = tokenizer
        self.per_step = settings.micro_batch_size * settings.gradient_accumulation_steps * self.world
        self.steps_per_epoch = len(data) // self.per_step
        if self.steps_per_epoch == 0:
            raise TrainingError(
                f"{len(data)} training examples are fewer than one optimiser step needs "
                f"(micro_batch_size × gradient_accumulation_steps × processes = {self.per_step})",
                hint="add data, or lower train.micro_batch_size or train.gradient_accumulation_steps")
        self.total_steps = settings.max_steps or max(1, math.ceil(settings.epochs * self.steps_per_epoch))
        self._cache: tuple[int, list[int]] | None = None
        self.layout = f"padded (never packed) micro-batches of {settings.micro_batch_size} pairs"

    def _order(self, epoch: int) -> list[int]:
        if self._cache is None or self._cache[0] != epoch:
            order = list(range(len(self.data)))
            random.Random(self.settings.seed * 1_000_003 + epoch).shuffle(order)
            self._cache = (epoch, order)
        return self._cache[1]

    def step_examples(self, step: int) -> list[dict[str, Any]]:
        """Every example of the step, over all micro-batches and ranks, in a fixed order."""
        epoch, k = divmod(step, self.steps_per_epoch)
        window = self._order(epoch)[k * self.per_step:(k + 1) * self.per_step]
        return [self.data.examples[i] for i in window]

    def micro_batches_for_step(self, step: int) -> list[PairBatch]:
        examples = self.step_examples(step)
        size = self.settings.micro_batch_size
        chunks = [examples[i:i + size] for i in range(0, len(examples), size)]
        mine = chunks[self.rank::self.world]
        if self.data.kind == "pairs":
            return [make_pair_batch(c, self.pad_id) for c in mine]
        kl = kl_features(examples, self.tokenizer, self.settings.max_seq_len)
        kl_chunks = [kl[i:i + size] for i in range(0, len(kl), size)][self.rank::self.world]
        return [make_kto_batch(c, k, self.pad_id) for c, k in zip(mine, kl_chunks)]


def kl_features(examples: list[dict[str, Any]], tokenizer, max_length: int) -> list[dict[str, list[int]]]:
    """KTO's KL estimate pairs each prompt with the previous example's completion, rotating the
    whole step's examples: (x_1, y_n), (x_2, y_1), ..., (x_n, y_{n-1}), as TRL does per batch."""
    out = []
    for i, e in enumerate(examples):
        other = examples[i - 1]
        try:
            out.append(tokenize_completion(tokenizer, e["prompt"], other["completion_messages"], max_length,
                                           e.get("tools")))
        except UntrainableConversationError:  # too long: keep the matched completion for this slot
            out.append(e["completion"])
    return out


def preference_eval_batches(data: PreferenceSet, settings: TrainSettings, dist, pad_id: int,
                            tokenizer=None) -> list[PairBatch]:
    rank, world = dist.rank, dist.world_size
    size = settings.micro_batch_size
    chunks = [data.examples[i:i + size] for i in range(0, len(data.examples), size)][rank::world]
    if data.kind == "pairs":
        return [make_pair_batch(c, pad_id, split="validation") for c in chunks]
    return [make_kto_batch(c, kl_features(c, tokenizer, settings.max_seq_len), pad_id) for c in chunks]
