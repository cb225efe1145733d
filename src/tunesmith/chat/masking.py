"""Tokenize a conversation for supervised fine-tuning, with labels only where the model must learn.

The rule: an assistant turn's trained tokens are exactly the tokens the model has to generate
when it is served, that is, everything after `render_prompt(messages_before_the_turn)` (the
serving prompt, with the generation prompt) up to and including the first stop token the
template writes after the answer (`<|im_end|>`, `<|eot_id|>`, `</s>`, `<end_of_turn>`, EOS).
Whatever the template writes after that token (ChatML's newline, Mistral's space) is never
generated, because generation stops at the token, so it carries no loss.

The spans are found by incremental prefix rendering through the tokenizer's own chat template, so
any template works, with or without `{% generation %}` markers: for assistant message i, render
messages[:i] with the generation prompt and messages[:i+1] without it, and check that the first,
and the second up to its first stop token, are prefixes of the whole conversation's rendering.
Tokens after the stop token may differ (a template may close only the last turn with EOS) but
must be separators: a message that goes on after a stop token is refused. A template that
renders earlier turns differently once later turns exist (some drop the reasoning of earlier
answers, some move the system prompt into the last user turn) fails the prefix check, and
tunesmith raises `TemplateError` rather than train on tokens the served model never sees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tunesmith.chat.templates import render_batch
from tunesmith.chat.tokens import stop_token_ids
from tunesmith.errors import DataError, TemplateError

IGNORE_INDEX = -100  # the label value PyTorch's cross-entropy (and transformers' losses) skip


class UntrainableConversationError(DataError):
    """A conversation that leaves no token to train on; the data stage drops it and counts it.

    `reason` is one of "no_assistant_turn", "all_turns_weight_zero" and "too_long".
    """

    def __init__(self, reason: str, message: str, *, hint: str | None = None):
        self.reason = reason
        super().__init__(message, hint=hint)


@dataclass
class TokenizedConversation:
    """One conversation as model inputs.

    `labels[j]` is `input_ids[j]` where the token carries loss and `IGNORE_INDEX` elsewhere; the
    first token never carries loss because nothing precedes it. `assistant_spans` holds, for each
    assistant turn kept, the half-open range of the tokens the model generates (answer and stop
    token), trained or not. `truncated` and `num_dropped_messages` record what `max_length` cut.
    """

    input_ids: list[int]
    labels: list[int]
    attention_mask: list[int]
    num_trained_tokens: int
    assistant_spans: list[tuple[int, int]] = field(default_factory=list)
    truncated: bool = False
    num_dropped_messages: int = 0

    def to_features(self) -> dict[str, list[int]]:
        """The columns a collator consumes."""
        return {"input_ids": self.input_ids, "labels": self.labels, "attention_mask": self.attention_mask}


def _weights(messages: Sequence[Mapping[str, Any]]) -> list[bool]:
    weights = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise DataError(
                "a message must be a mapping with a string `role`",
                where=f"message {i}",
                hint='write messages as {"role": "user", "content": "..."}',
            )
        weight = message.get("weight", 1)
        if isinstance(weight, bool) or weight in (0, 1):
            weights.append(bool(weight))
        else:
            raise DataError(
                f"`weight` must be 0 or 1, got {weight!r}",
                where=f"message {i}",
                hint="use weight 0 to exclude a message from the loss, 1 (the default) to train on it",
            )
    return weights


def _require_prefix(full: list[int], part: list[int], what: str) -> None:
    if full[: len(part)] != part:
        at = next((j for j, (a, b) in enumerate(zip(full, part)) if a != b), min(len(full), len(part)))
        raise TemplateError(
            f"{what} is not a prefix of the whole conversation's tokens (they differ from token {at}): "
            "the chat template renders earlier turns differently once later turns exist, or the "
            "tokenizer merges characters across a turn boundary, so training would not match serving",
            hint="use a template that renders each turn independently of the turns after it "
            "(tunesmith.chat.templates.DEFAULT_CHAT_TEMPLATE is one), or train on one assistant "
            "turn per example",
        )


def _assistant_spans(
    tokenizer,
    full: list[int],
    prompts: list[list[int]],
    throughs: list[list[int]],
    assistant_indices: list[int],
    stops: set[int],
) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    previous_end = 0
    for index, prompt, through in zip(assistant_indices, prompts, throughs):
        _require_prefix(full, prompt, f"the prompt before assistant message {index}")
        start = len(prompt)
        if len(through) <= start or start < previous_end:
            raise TemplateError(
                f"assistant message {index} renders as no tokens after its generation prompt, "
                "so its loss mask would be empty",
                hint="check that the chat template writes assistant messages and supports "
                "`add_generation_prompt`",
            )
        # Generation stops at the first stop token, so the turn ends there. The answer itself
        # cannot contain one: control-token strings inside messages are encoded as text.
        stop_at = next((j for j in range(start, len(through)) if through[j] in stops), None)
        if stop_at is None:
            raise TemplateError(
                f"assistant message {index} does not end with an end-of-turn or EOS token, so a "
                "model trained on it would never learn to stop",
                hint="use a chat template that closes assistant turns with a control token, such as "
                "tunesmith's default ChatML template",
            )
        # What the template writes after the stop token is never generated and may depend on the
        # turns that follow (a newline, an EOS closing the last turn), so only the tokens up to the
        # stop token must match the whole rendering. Anything but separators there, though, means
        # the message goes on after a stop token and the served model would cut it short.
        _require_prefix(full, through[: stop_at + 1], f"the conversation up to assistant message {index}")
        rest = [t for t in through[stop_at + 1 :] if t not in stops]
        if tokenizer.decode(rest).strip():
            raise TemplateError(
                f"assistant message {index} continues after its stop token "
                f"{tokenizer.convert_ids_to_tokens(through[stop_at])!r}, where generation would stop",
                hint="use a chat template that writes each assistant message as one turn closed by a "
                "single end-of-turn token",
            )
        spans.append((start, stop_at + 1))
        previous_end = stop_at + 1
    return spans


def _message_ranges(tokenizer, messages, indices, tools, full) -> list[tuple[int, int]]:
    """Token range each of `indices` adds to the rendering: [len(render(:k)), len(render(:k+1)))."""
    befores = render_batch(
        tokenizer, [messages[:k] for k in indices if k > 0], tools=tools, add_generation_prompt=False
    )
    afters = render_batch(tokenizer, [messages[: k + 1] for k in indices], tools=tools, add_generation_prompt=False)
    befores_iter = iter(befores)
    ranges = []
    for k, after in zip(indices, afters):
        before = next(befores_iter) if k > 0 else []
        _require_prefix(full, before, f"the conversation before message {k}")
        _require_prefix(full, after, f"the conversation up to message {k}")
        ranges.append((len(before), len(after)))
    return ranges


def tokenize_conversation(
    tokenizer,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    train_on_inputs: bool = False,
    max_length: int | None = None,
) -> TokenizedConversation:
    """Render `messages` with the tokenizer's chat template and build the loss mask.

    By default exactly the generated tokens of every assistant turn carry loss (answer plus its
    end-of-turn / EOS token). `train_on_inputs=True` trains on every token instead. A message
    with `"weight": 0` carries no loss; with `train_on_inputs`, none of the tokens it adds to the
    rendering do.

    `max_length` keeps the start of the conversation and cuts it right after the stop token of the
    last assistant turn that fits, so no turn is ever half kept; the messages cut are counted in
    `num_dropped_messages`. When not even the first assistant turn fits, or nothing is left to
    train on, `UntrainableConversationError` says why (the data stage drops and reports those).

    Raises `TemplateError` when the template cannot render the conversation or when training
    tokens cannot be derived exactly (see the module docstring).
    """
    messages = list(messages)
    if not messages:
        raise DataError("the conversation has no messages", hint="every example needs at least one message")
    weights = _weights(messages)
    assistant_indices = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not assistant_indices and not train_on_inputs:
        raise UntrainableConversationError(
            "no_assistant_turn",
            "the conversation has no assistant message, so there is nothing to train on",
            hint="add the assistant's answer, or set train_on_inputs to train on the whole text",
        )
    if assistant_indices and assistant_indices[0] == 0:
        raise DataError(
            "the conversation starts with an assistant message, which has no prompt to answer",
            where="message 0",
            hint="start the conversation with a system or user message",
        )

    stops = set(stop_token_ids(tokenizer))
    # One batched call renders every prefix through an assistant message and the whole conversation.
    *throughs, full = render_batch(
        tokenizer, [messages[: i + 1] for i in assistant_indices] + [messages], tools=tools,
        add_generation_prompt=False,
    )
    prompts = render_batch(
        tokenizer, [messages[:i] for i in assistant_indices], tools=tools, add_generation_prompt=True
    )
    spans = _assistant_spans(tokenizer, full, prompts, throughs, assistant_indices, stops)

    if train_on_inputs:
        labels = list(full)
        excluded = [k for k, weight in enumerate(weights) if not weight]
        for start, end in _message_ranges(tokenizer, messages, excluded, tools, full):
            labels[start:end] = [IGNORE_INDEX] * (end - start)
    else:
        labels = [IGNORE_INDEX] * len(full)
        for (start, end), index in zip(spans, assistant_indices):
            if weights[index]:
                labels[start:end] = full[start:end]
    if labels:
        labels[0] = IGNORE_INDEX

    input_ids, truncated, dropped = full, False, 0
    if max_length is not None and len(full) > max_length:
        fitting = [k for k, (_, end) in enumerate(spans) if end <= max_length]
        if not fitting:
            where = (
                f"its first assistant turn ends at token {spans[0][1]}"
                if spans
                else "it has no assistant turn to cut after"
            )
            raise UntrainableConversationError(
                "too_long",
                f"the conversation is {len(full)} tokens, more than max_length {max_length}, and {where}",
                hint="raise max_length or shorten the first exchange of this example",
            )
        last = fitting[-1]
        cut = spans[last][1]
        input_ids, labels, spans = full[:cut], labels[:cut], spans[: last + 1]
        truncated, dropped = True, len(messages) - 1 - assistant_indices[last]

    trained = sum(label != IGNORE_INDEX for label in labels)
    if trained == 0:
        if truncated:
            reason, why = "too_long", f"the assistant turns that fit in max_length {max_length} all have weight 0"
        else:
            reason, why = "all_turns_weight_zero", "every assistant message has weight 0"
        raise UntrainableConversationError(
            reason, f"nothing to train on: {why}", hint="give at least one assistant message weight 1"
        )
    return TokenizedConversation(
        input_ids=list(input_ids),
        labels=labels,
        attention_mask=[1] * len(input_ids),
        num_trained_tokens=trained,
        assistant_spans=spans,
        truncated=truncated,
        num_dropped_messages=dropped,
    )


__all__ = ["IGNORE_INDEX", "TokenizedConversation", "UntrainableConversationError", "tokenize_conversation"]
