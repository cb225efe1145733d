"""Chat templates: the model's own template is kept, tunesmith's ChatML default is installed when
there is none, and training and serving render the same tokens (including the default model)."""

from __future__ import annotations

import json

import pytest

from tunesmith.chat.masking import tokenize_conversation
from tunesmith.chat.templates import ensure_chat_template, render_prompt, render_prompt_text
from tunesmith.chat.tokens import end_of_turn_token, ensure_pad_token, stop_token_ids
from tunesmith.errors import TemplateError
from tunesmith.models import default_model_path

from chat_helpers import A1, A2, Q1, Q2, SYSTEM, labelled_runs, train_tokenizer

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]
TOOL_CONVERSATION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "tool_calls": [{"type": "function",
                                          "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": "18 C, sunny"},
    {"role": "assistant", "content": "It is 18 C and sunny."},
]


@pytest.fixture
def base_tokenizer():
    """A base-model tokenizer: BOS and EOS, no chat template, no chat tokens."""
    tokenizer = train_tokenizer(specials=["<s>", "</s>"], template=None, bos_token="<s>", eos_token="</s>")
    ensure_chat_template(tokenizer)
    return tokenizer


def test_the_default_template_is_chatml_with_bos_and_special_turn_tokens(base_tokenizer):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": Q1}]
    assert render_prompt_text(base_tokenizer, messages) == (
        f"<s><|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{Q1}<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = render_prompt(base_tokenizer, messages)
    assert ids.count(base_tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3
    assert end_of_turn_token(base_tokenizer) == "<|im_end|>"


def test_installing_the_default_twice_adds_nothing(base_tokenizer):
    size = len(base_tokenizer)
    again = ensure_chat_template(base_tokenizer)
    assert again.source == "default" and again.added_tokens == () and len(base_tokenizer) == size


def test_existing_chat_tokens_are_reused_not_added():
    tokenizer = train_tokenizer(specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], template=None,
                                eos_token="<|endoftext|>")
    size = len(tokenizer)
    setup = ensure_chat_template(tokenizer)
    assert setup.source == "default" and not setup.embeddings_changed and len(tokenizer) == size


def test_the_default_template_renders_tools_and_trains_tool_calls(base_tokenizer):
    text = render_prompt_text(base_tokenizer, TOOL_CONVERSATION[:2], tools=TOOLS)
    assert json.dumps(TOOLS[0]) in text and text.startswith(f"<s><|im_start|>system\n{SYSTEM}\n\n# Tools")
    tokenized = tokenize_conversation(base_tokenizer, TOOL_CONVERSATION, tools=TOOLS)
    assert labelled_runs(base_tokenizer, tokenized.labels) == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
        "It is 18 C and sunny.<|im_end|>",
    ]
    start, _ = tokenized.assistant_spans[1]
    assert tokenized.input_ids[:start] == render_prompt(base_tokenizer, TOOL_CONVERSATION[:4], tools=TOOLS)


def test_text_and_token_rendering_agree(family):
    messages = [{"role": "user", "content": Q1}, {"role": "assistant", "content": A1}, {"role": "user", "content": Q2}]
    text = render_prompt_text(family.tokenizer, messages)
    assert family.tokenizer(text, add_special_tokens=False)["input_ids"] == render_prompt(family.tokenizer, messages)


def test_rendering_errors_are_template_errors(families):
    with pytest.raises(TemplateError, match="empty conversation"):
        render_prompt(families["chatml"].tokenizer, [])
    with pytest.raises(TemplateError, match="roles must alternate"):
        render_prompt(families["gemma"].tokenizer, [{"role": "user", "content": Q1}, {"role": "user", "content": Q2}])


# --------------------------------------------------------------------------- the default model


@pytest.fixture(scope="module")
def default_tokenizer():
    path = default_model_path()
    if not (path / "tokenizer.json").is_file():
        pytest.skip(f"the embedded default model's tokenizer is not built yet ({path}/tokenizer.json is absent)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def test_default_model_masks_answers_and_im_end(default_tokenizer):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": Q1},
                {"role": "assistant", "content": A1}, {"role": "user", "content": Q2},
                {"role": "assistant", "content": A2}]
    tokenized = tokenize_conversation(default_tokenizer, messages)
    assert labelled_runs(default_tokenizer, tokenized.labels) == [A1 + "<|im_end|>", A2 + "<|im_end|>"]
    assert tokenized.input_ids[0] == default_tokenizer.bos_token_id
    for index, (start, _) in zip((2, 4), tokenized.assistant_spans):
        assert tokenized.input_ids[:start] == render_prompt(default_tokenizer, messages[:index])


def test_default_model_stops_on_im_end_and_eos_and_pads_with_neither(default_tokenizer):
    from transformers import GenerationConfig

    im_end = default_tokenizer.convert_tokens_to_ids("<|im_end|>")
    stops = stop_token_ids(default_tokenizer)
    assert stops == [im_end, default_tokenizer.eos_token_id]
    generation_config = GenerationConfig.from_pretrained(default_model_path())
    assert set(stops) == set(stop_token_ids(default_tokenizer, generation_config))
    pad = ensure_pad_token(default_tokenizer)
    assert (pad.token, pad.added) == ("<|pad|>", False) and pad.id not in stops
