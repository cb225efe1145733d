"""Chat templates: the model's own template, tunesmith's default, and the one rendering function.

Training and serving must show the model exactly the same tokens for the same conversation, or
the tuned model is evaluated on a format it never saw. Everything in tunesmith that turns
messages into token ids therefore goes through `render_prompt` (serving, evaluation) or through
`render_batch`, which `tunesmith.chat.masking` uses for training; both call the tokenizer's
`apply_chat_template` with the same options.

A tokenizer that has no chat template (a base model) gets `DEFAULT_CHAT_TEMPLATE`, ChatML, and
its two control tokens, via `ensure_chat_template`; the model's embedding matrix must then grow
and the new rows must be trained and saved (see `tunesmith.chat.tokens.prepare_chat_model`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jinja2

from tunesmith.errors import TemplateError

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
DEFAULT_CHAT_TOKENS = (IM_START, IM_END)

# ChatML, as used by Qwen, SmolLM, Hermes and tunesmith's demo model. It writes the tokenizer's BOS
# first when there is one (base models were pretrained with it), ends every turn with <|im_end|>,
# which generation stops on, and follows it with a newline that is never trained. Tools are listed
# in the system turn and tool calls are written as Hermes-style <tool_call> JSON, the format most
# open tool-calling models were tuned on. The template has no {% generation %} markers on purpose:
# llama.cpp's template engine, which reads this template from exported GGUF files, rejects them.
DEFAULT_CHAT_TEMPLATE = (
    "{%- if bos_token is defined and bos_token %}{{ bos_token }}{% endif %}"
    "{%- macro text(content) %}"
    "{%- if content is string %}{{ content }}"
    "{%- elif content is iterable %}{% for part in content %}"
    "{%- if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{%- endif %}"
    "{%- endmacro %}"
    "{%- set loop_messages = messages %}"
    "{%- if tools %}"
    "{{ '<|im_start|>system\n' }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{{ text(messages[0]['content']) + '\n\n' }}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- endif %}"
    "{{ '# Tools\n\nYou may call one or more functions. Their signatures are within <tools></tools>:\n<tools>' }}"
    "{%- for tool in tools %}{{ '\n' + (tool | tojson) }}{% endfor %}"
    "{{ '\n</tools>\n\nFor each call, write a JSON object with the function name and arguments within"
    " <tool_call></tool_call> tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}"
    "\n</tool_call><|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for message in loop_messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['content'] is defined %}{{ text(message['content']) }}{% endif %}"
    "{%- if message['tool_calls'] is defined %}"
    "{%- for call in message['tool_calls'] %}"
    "{%- set call = call['function'] if call['function'] is defined else call %}"
    "{%- if not loop.first or (message['content'] is defined and message['content']) %}{{ '\n' }}{% endif %}"
    "{{ '<tool_call>\n{\"name\": \"' + call['name'] + '\", \"arguments\": ' }}"
    "{{- call['arguments'] if call['arguments'] is string else call['arguments'] | tojson }}"
    "{{- '}\n</tool_call>' }}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{ '<|im_end|>\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Keys tunesmith reads from a message that are not part of the chat format. They are removed before
# rendering so that a template which prints whole message dicts cannot leak them into the prompt.
TUNESMITH_MESSAGE_KEYS = ("weight",)


@dataclass(frozen=True)
class ChatTemplateSetup:
    """What `ensure_chat_template` did to a tokenizer.

    `source` is "model" when the tokenizer already had a template and "default" when tunesmith
    installed ChatML. `added_tokens` lists the special tokens appended to the vocabulary; when it
    is not empty the model's embeddings must be resized, trained and saved with the adapter.
    """

    source: Literal["model", "default"]
    added_tokens: tuple[str, ...] = ()

    @property
    def embeddings_changed(self) -> bool:
        return bool(self.added_tokens)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def ensure_chat_template(tokenizer) -> ChatTemplateSetup:
    """Keep the tokenizer's own chat template, or install tunesmith's default (ChatML).

    The default needs `<|im_start|>` and `<|im_end|>` as special tokens; any of them the vocabulary
    lacks is added. The caller must then resize the model's embeddings and train and save them
    (`tunesmith.chat.tokens.prepare_chat_model` does both).
    """
    if tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE:
        return ChatTemplateSetup(source="default")
    if has_chat_template(tokenizer):
        return ChatTemplateSetup(source="model")
    vocab = tokenizer.get_vocab()
    registered = {token.content for token in tokenizer.added_tokens_decoder.values()}
    # A token the vocabulary has only as an ordinary piece would not be matched whole in text, so it
    # is registered as special too; that keeps its id and adds no embedding row.
    unregistered = [token for token in DEFAULT_CHAT_TOKENS if token not in registered]
    if unregistered:
        tokenizer.add_special_tokens({"extra_special_tokens": unregistered}, replace_extra_special_tokens=False)
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return ChatTemplateSetup(source="default", added_tokens=tuple(t for t in unregistered if t not in vocab))


def _clean(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k not in TUNESMITH_MESSAGE_KEYS} for m in messages]


def _render_error(exc: Exception, tokenizer) -> TemplateError:
    if not has_chat_template(tokenizer):
        return TemplateError(
            "the tokenizer has no chat template",
            hint="call tunesmith.chat.templates.ensure_chat_template(tokenizer) to install the default "
            "ChatML template, or set `tokenizer.chat_template`",
        )
    return TemplateError(
        f"the chat template could not render this conversation: {exc}",
        hint="check that the roles and their order are ones this model's template accepts "
        "(some templates have no system role or require user/assistant to alternate)",
    )


def render_batch(
    tokenizer,
    conversations: Sequence[Sequence[Mapping[str, Any]]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool,
) -> list[list[int]]:
    """Token ids of several conversations, rendered exactly as `render_prompt` renders one.

    Control tokens written inside message text (a user typing "<|im_end|>") are encoded as plain
    text (`sanitize_control_tokens`), so only the template itself can open or close a turn.
    """
    if not conversations:
        return []
    try:
        return tokenizer.apply_chat_template(
            [_clean(c) for c in conversations],
            tools=list(tools) if tools else None,
            add_generation_prompt=add_generation_prompt,
            tokenize=True,
            return_dict=False,
            sanitize_control_tokens=True,
        )
    except (jinja2.TemplateError, TypeError, ValueError, KeyError) as exc:
        raise _render_error(exc, tokenizer) from exc


def render_prompt(
    tokenizer,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = True,
) -> list[int]:
    """The token ids the model sees for `messages`; with `add_generation_prompt`, ready to generate.

    This is the one rendering function of tunesmith: serving and evaluation call it, and the
    training labels are computed from the same renderings, so the prompt of every trained
    assistant turn equals `render_prompt(messages_before_that_turn)`.
    """
    if not messages:
        raise TemplateError("cannot render an empty conversation", hint="pass at least one message")
    return render_batch(tokenizer, [messages], tools=tools, add_generation_prompt=add_generation_prompt)[0]


def render_prompt_text(
    tokenizer,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = True,
) -> str:
    """The text `render_prompt` tokenizes, for display and for engines that take text prompts.

    Text cannot tell a control token written by the template from the same characters typed in a
    message; when the text is encoded again (with `add_special_tokens=False`) it gives
    `render_prompt`'s ids only if no message contains control-token strings.
    """
    if not messages:
        raise TemplateError("cannot render an empty conversation", hint="pass at least one message")
    try:
        return tokenizer.apply_chat_template(
            _clean(messages),
            tools=list(tools) if tools else None,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
        )
    except (jinja2.TemplateError, TypeError, ValueError, KeyError) as exc:
        raise _render_error(exc, tokenizer) from exc


__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "DEFAULT_CHAT_TOKENS",
    "IM_END",
    "IM_START",
    "ChatTemplateSetup",
    "ensure_chat_template",
    "has_chat_template",
    "render_batch",
    "render_prompt",
    "render_prompt_text",
]
