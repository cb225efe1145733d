"""Token lengths under a model's chat template, and what to do with examples that do not fit.

Counting goes through `tunesmith.chat.masking.tokenize_conversation`, the function training
uses, so the count is the length training will see. A tokenizer without a chat template gets
tunesmith's default ChatML template here too, as it does in training.

`--overlong truncate` never cuts a turn in half (a half answer teaches the model to stop
mid-sentence): a conversation keeps its turns up to the last assistant turn that fits, and one
whose first exchange does not fit is dropped. Plain text is cut at the token limit. A preference
pair has no turns to spare, so an overlong pair is dropped either way.
"""

from __future__ import annotations

from typing import Any

from tunesmith.data.rules import Reject
from tunesmith.data.schema import kind_of
from tunesmith.errors import TemplateError
from tunesmith.models.config import ModelConfig


def load_chat_tokenizer(model: ModelConfig):
    """The model's tokenizer, with a chat template installed when it has none."""
    from tunesmith.chat.templates import ensure_chat_template
    from tunesmith.models.loading import load_tokenizer

    tokenizer = load_tokenizer(model)
    ensure_chat_template(tokenizer)
    return tokenizer


def tokenize_row(tokenizer, messages: list[dict[str, Any]], tools: list[Any] | None = None, *,
                 max_length: int | None = None):
    """`tokenize_conversation`, with its user errors turned into the data stage's rules."""
    from tunesmith.chat.masking import UntrainableConversationError, tokenize_conversation

    try:
        return tokenize_conversation(tokenizer, messages, tools=tools, max_length=max_length)
    except UntrainableConversationError as exc:
        rule = "overlong" if exc.reason == "too_long" else "no_assistant_turn"
        raise Reject(rule, exc.message) from None
    except TemplateError as exc:
        raise Reject("template_error", exc.message) from None


class LengthChecker:
    """Measures examples in tokens; drops or truncates those over `max_seq_len`."""

    def __init__(self, tokenizer, *, max_seq_len: int, truncate: bool):
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.truncate = truncate

    def _over(self, length: int) -> Reject:
        return Reject("overlong", f"{length:,} tokens, over max_seq_len={self.max_seq_len:,}")

    def fit(self, row: dict[str, Any]) -> tuple[dict[str, Any], int, bool]:
        """(the row, cut if truncation is on and needed, its token length, whether it was cut)."""
        kind = kind_of(row)
        if kind == "text":
            return self._fit_text(row)
        if kind == "preference":
            lengths = [len(tokenize_row(self.tokenizer, row["prompt"] + row[answer]).input_ids)
                       for answer in ("chosen", "rejected")]
            if max(lengths) > self.max_seq_len:
                raise self._over(max(lengths))
            return row, max(lengths), False
        messages, tools = row["messages"], row.get("tools")
        tokenized = tokenize_row(self.tokenizer, messages, tools,
                                 max_length=self.max_seq_len if self.truncate else None)
        length = len(tokenized.input_ids)
        if length > self.max_seq_len:
            raise self._over(length)
        if not tokenized.truncated:
            return row, length, False
        cut = dict(row)
        cut["messages"] = messages[: len(messages) - tokenized.num_dropped_messages]
        # Measured again as written: the cut conversation renders with the separator the
        # template puts after the last kept turn, which the cut token sequence above lacks.
        length = len(tokenize_row(self.tokenizer, cut["messages"], tools, max_length=self.max_seq_len).input_ids)
        return cut, length, True

    def _fit_text(self, row: dict[str, Any]) -> tuple[dict[str, Any], int, bool]:
        ids = self.tokenizer(row["text"])["input_ids"]
        if len(ids) <= self.max_seq_len:
            return row, len(ids), False
        if not self.truncate:
            raise self._over(len(ids))
        # Decoding a prefix and encoding it again can merge into a token or two more; shrink
        # until the re-encoded text fits.
        plain = self.tokenizer(row["text"], add_special_tokens=False)["input_ids"]
        keep = len(plain) - (len(ids) - self.max_seq_len)
        while keep > 0:
            text = self.tokenizer.decode(plain[:keep], skip_special_tokens=True)
            length = len(self.tokenizer(text)["input_ids"])
            if length <= self.max_seq_len:
                return {**row, "text": text}, length, True
            keep -= length - self.max_seq_len
        raise self._over(len(ids))
