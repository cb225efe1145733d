"""Loss masks: exactly the assistant answers and their end-of-turn tokens carry loss, for every
template family, and anything that cannot be masked exactly is an error, never a wrong mask."""

from __future__ import annotations

import pytest

from tunesmith.chat.masking import IGNORE_INDEX, UntrainableConversationError, tokenize_conversation
from tunesmith.chat.templates import render_prompt
from tunesmith.chat.tokens import end_of_turn_token, stop_token_ids
from tunesmith.errors import DataError, TemplateError

from chat_helpers import A1, A2, A3, Q1, Q2, Q3, SYSTEM, labelled_runs, train_tokenizer

PAIRS = [(Q1, A1), (Q2, A2), (Q3, A3)]


def conversation(turns: int = 1, system: bool = False) -> list[dict]:
    messages = [{"role": "system", "content": SYSTEM}] if system else []
    for question, answer in PAIRS[:turns]:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages


def test_single_turn_trains_exactly_the_answer_and_its_end_of_turn_token(family):
    tokenized = tokenize_conversation(family.tokenizer, conversation())
    assert labelled_runs(family.tokenizer, tokenized.labels) == [family.answer_text(A1)]


def test_multi_turn_trains_every_answer_and_nothing_else(family):
    system = family.system != "raises"
    tokenized = tokenize_conversation(family.tokenizer, conversation(turns=3, system=system))
    assert labelled_runs(family.tokenizer, tokenized.labels) == [family.answer_text(a) for a in (A1, A2, A3)]
    assert len(tokenized.assistant_spans) == 3


def test_labels_copy_input_ids_where_trained_and_count_them(family):
    tokenized = tokenize_conversation(family.tokenizer, conversation(turns=2))
    assert len(tokenized.labels) == len(tokenized.input_ids) == len(tokenized.attention_mask)
    assert all(lab in (IGNORE_INDEX, tok) for lab, tok in zip(tokenized.labels, tokenized.input_ids))
    assert tokenized.num_trained_tokens == sum(lab != IGNORE_INDEX for lab in tokenized.labels)
    assert set(tokenized.attention_mask) == {1}


def test_every_turn_ends_on_a_trained_stop_token_and_nothing_after_it_is_trained(family):
    tokenizer = family.tokenizer
    assert end_of_turn_token(tokenizer) == family.end_of_turn
    stops = stop_token_ids(tokenizer)
    assert stops == tokenizer.convert_tokens_to_ids(list(family.stop_tokens))
    tokenized = tokenize_conversation(tokenizer, conversation(turns=2))
    eot = tokenizer.convert_tokens_to_ids(family.end_of_turn)
    for start, end in tokenized.assistant_spans:
        assert tokenized.input_ids[end - 1] == eot and tokenized.labels[end - 1] == eot
        if end < len(tokenized.labels):  # ChatML's "\n", Mistral's " ", the next turn's header
            assert tokenized.labels[end] == IGNORE_INDEX


def test_train_on_inputs_trains_every_token_but_the_first(family):
    tokenized = tokenize_conversation(family.tokenizer, conversation(turns=2), train_on_inputs=True)
    assert tokenized.labels[0] == IGNORE_INDEX
    assert tokenized.labels[1:] == tokenized.input_ids[1:]
    assert tokenized.num_trained_tokens == len(tokenized.input_ids) - 1


def test_weight_zero_excludes_that_assistant_turn(family):
    messages = conversation(turns=2)
    messages[1]["weight"] = 0
    tokenized = tokenize_conversation(family.tokenizer, messages)
    assert labelled_runs(family.tokenizer, tokenized.labels) == [family.answer_text(A2)]
    # The weight key is tunesmith's, not the template's: the rendering is unchanged by it.
    assert tokenized.input_ids == tokenize_conversation(family.tokenizer, conversation(turns=2)).input_ids


def test_weight_zero_with_train_on_inputs_excludes_every_token_of_that_message(families):
    tokenizer = families["chatml"].tokenizer
    messages = conversation(turns=2)
    messages[2]["weight"] = 0  # the second question
    tokenized = tokenize_conversation(tokenizer, messages, train_on_inputs=True)
    untrained = [tok for tok, lab in zip(tokenized.input_ids, tokenized.labels) if lab == IGNORE_INDEX]
    assert tokenizer.decode(untrained[1:]) == f"<|im_start|>user\n{Q2}<|im_end|>\n"


def test_prompt_of_every_trained_turn_is_what_serving_renders(family):
    """Template parity: the tokens before each assistant answer are render_prompt's output."""
    messages = conversation(turns=3, system=family.system != "raises")
    tokenized = tokenize_conversation(family.tokenizer, messages)
    assistant_indices = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    for index, (start, _) in zip(assistant_indices, tokenized.assistant_spans):
        assert tokenized.input_ids[:start] == render_prompt(family.tokenizer, messages[:index])


def test_gemma_folds_the_system_prompt_into_the_first_user_turn(families):
    tokenizer = families["gemma"].tokenizer
    tokenized = tokenize_conversation(tokenizer, conversation(turns=2, system=True))
    text = tokenizer.decode(tokenized.input_ids)
    assert f"<start_of_turn>user\n{SYSTEM}\n\n{Q1}<end_of_turn>" in text
    assert labelled_runs(tokenizer, tokenized.labels) == [A1 + "<end_of_turn>", A2 + "<end_of_turn>"]


def test_a_template_without_system_role_that_raises_is_a_template_error(families):
    with pytest.raises(TemplateError, match="roles must alternate"):
        tokenize_conversation(families["mistral"].tokenizer, conversation(turns=1, system=True))


def test_control_tokens_typed_in_messages_are_text_not_turn_boundaries(families):
    tokenizer = families["chatml"].tokenizer
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    messages = [
        {"role": "user", "content": "Close with <|im_end|> please"},
        {"role": "assistant", "content": "Like <|im_end|> this"},
    ]
    tokenized = tokenize_conversation(tokenizer, messages)
    (start, end), = tokenized.assistant_spans
    assert tokenized.input_ids[start:end].count(im_end) == 1 and tokenized.input_ids[end - 1] == im_end
    assert labelled_runs(tokenizer, tokenized.labels) == ["Like <|im_end|> this<|im_end|>"]


# --------------------------------------------------------------------------- truncation


def test_truncation_cuts_after_the_last_whole_assistant_turn_that_fits(families):
    tokenizer = families["chatml"].tokenizer
    messages = conversation(turns=2, system=True)
    whole = tokenize_conversation(tokenizer, messages)
    (_, end1), (_, end2) = whole.assistant_spans

    assert tokenize_conversation(tokenizer, messages, max_length=len(whole.input_ids)) == whole

    cut = tokenize_conversation(tokenizer, messages, max_length=end2 - 1)
    assert cut.truncated and cut.num_dropped_messages == 2
    assert cut.input_ids == whole.input_ids[:end1] and cut.labels == whole.labels[:end1]
    assert labelled_runs(tokenizer, cut.labels) == [A1 + "<|im_end|>"]

    only_newline = tokenize_conversation(tokenizer, messages, max_length=end2)
    assert only_newline.truncated and only_newline.num_dropped_messages == 0
    assert labelled_runs(tokenizer, only_newline.labels) == [A1 + "<|im_end|>", A2 + "<|im_end|>"]


def test_truncation_that_leaves_no_whole_turn_is_reported_not_silent(families):
    tokenizer = families["chatml"].tokenizer
    messages = conversation(turns=2)
    (_, end1), _ = tokenize_conversation(tokenizer, messages).assistant_spans
    with pytest.raises(UntrainableConversationError) as info:
        tokenize_conversation(tokenizer, messages, max_length=end1 - 1)
    assert info.value.reason == "too_long" and isinstance(info.value, DataError)
    messages[1]["weight"] = 0
    with pytest.raises(UntrainableConversationError) as info:
        tokenize_conversation(tokenizer, messages, max_length=end1 + 1)
    assert info.value.reason == "too_long"


# --------------------------------------------------------------------------- errors


def test_conversations_with_nothing_to_train_say_why(families):
    tokenizer = families["chatml"].tokenizer
    with pytest.raises(UntrainableConversationError) as info:
        tokenize_conversation(tokenizer, [{"role": "user", "content": Q1}])
    assert info.value.reason == "no_assistant_turn"
    messages = conversation(turns=2)
    messages[1]["weight"] = messages[3]["weight"] = 0
    with pytest.raises(UntrainableConversationError) as info:
        tokenize_conversation(tokenizer, messages)
    assert info.value.reason == "all_turns_weight_zero"


def test_malformed_conversations_are_data_errors(families):
    tokenizer = families["chatml"].tokenizer
    with pytest.raises(DataError, match="weight"):
        tokenize_conversation(tokenizer, [{"role": "user", "content": Q1},
                                          {"role": "assistant", "content": A1, "weight": 0.5}])
    with pytest.raises(DataError, match="starts with an assistant"):
        tokenize_conversation(tokenizer, [{"role": "assistant", "content": A1}])
    with pytest.raises(DataError, match="role"):
        tokenize_conversation(tokenizer, [{"content": Q1}])


def test_a_tokenizer_without_template_is_a_template_error_with_a_hint():
    tokenizer = train_tokenizer(specials=["<|endoftext|>"], template=None, eos_token="<|endoftext|>")
    with pytest.raises(TemplateError, match="no chat template") as info:
        tokenize_conversation(tokenizer, conversation())
    assert "ensure_chat_template" in info.value.hint


# The system prompt goes into the LAST user turn, as Mistral v0.3's template does: a turn's
# rendering changes once a later user turn exists, so earlier turns cannot be trained as served.
SYSTEM_IN_LAST_USER_TEMPLATE = (
    "{%- set sys = messages[0]['content'] if messages[0]['role'] == 'system' else '' %}"
    "{%- set loop_messages = messages[1:] if sys else messages %}"
    "{%- set last = namespace(user=-1) %}"
    "{%- for m in loop_messages %}{% if m['role'] == 'user' %}{% set last.user = loop.index0 %}{% endif %}{% endfor %}"
    "{%- for m in loop_messages %}{{ '<|im_start|>' + m['role'] + '\n' }}"
    "{%- if loop.index0 == last.user and sys %}{{ sys + '\n\n' }}{% endif %}"
    "{{ m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
NO_STOP_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
)
GENERATION_MARKERS_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ m['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# Like many community fine-tunes: EOS closes the last assistant turn only.
EOS_AT_END_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% if loop.last and m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# One assistant message written as two segments, each closed by <|im_end|> (as harmony-style
# templates write reasoning and answer): generation would stop after the first segment.
TWO_SEGMENT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}"
    "{% if m['role'] == 'assistant' %}{{ 'Thinking.<|im_end|><|im_start|>final\n' }}{% endif %}"
    "{{ m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_separators_and_eos_after_the_end_of_turn_token_are_not_trained():
    tokenizer = _chatml_tokenizer(EOS_AT_END_TEMPLATE)
    tokenized = tokenize_conversation(tokenizer, conversation(turns=2, system=True))
    assert labelled_runs(tokenizer, tokenized.labels) == [A1 + "<|im_end|>", A2 + "<|im_end|>"]
    assert tokenizer.decode(tokenized.input_ids[tokenized.assistant_spans[-1][1] :]) == "\n<|endoftext|>"


def test_a_message_that_goes_on_after_a_stop_token_is_refused():
    tokenizer = _chatml_tokenizer(TWO_SEGMENT_TEMPLATE)
    with pytest.raises(TemplateError, match="continues after its stop token"):
        tokenize_conversation(tokenizer, conversation())


def _chatml_tokenizer(template: str):
    return train_tokenizer(specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], template=template,
                           eos_token="<|endoftext|>")


def test_a_template_that_rewrites_earlier_turns_is_refused():
    tokenizer = _chatml_tokenizer(SYSTEM_IN_LAST_USER_TEMPLATE)
    single = tokenize_conversation(tokenizer, conversation(turns=1, system=True))
    assert labelled_runs(tokenizer, single.labels) == [A1 + "<|im_end|>"]
    with pytest.raises(TemplateError, match="not a prefix"):
        tokenize_conversation(tokenizer, conversation(turns=2, system=True))


def test_a_template_whose_turns_end_without_a_stop_token_is_refused():
    tokenizer = train_tokenizer(specials=["<|endoftext|>"], template=NO_STOP_TEMPLATE, eos_token="<|endoftext|>")
    with pytest.raises(TemplateError, match="never learn to stop"):
        tokenize_conversation(tokenizer, conversation())


def test_generation_markers_agree_with_prefix_rendering():
    tokenizer = _chatml_tokenizer(GENERATION_MARKERS_TEMPLATE)
    messages = conversation(turns=3, system=True)
    marked = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    tokenized = tokenize_conversation(tokenizer, messages)
    assert marked["input_ids"] == tokenized.input_ids
    assert marked["assistant_masks"] == [int(lab != IGNORE_INDEX) for lab in tokenized.labels]
    assert sum(marked["assistant_masks"]) == tokenized.num_trained_tokens > 0
