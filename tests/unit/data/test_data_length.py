"""Token lengths with a model: counted through the chat template exactly as training counts them,
overlong examples dropped or truncated by whole turns, and the trained tokens shown by inspect."""

from __future__ import annotations

import json

import pytest

from tunesmith.chat.masking import tokenize_conversation
from tunesmith.data import inspect, prepare
from tunesmith.data.config import DataInspectConfig, DataPrepareConfig
from tunesmith.data.length import LengthChecker, load_chat_tokenizer
from tunesmith.data.rules import Reject
from tunesmith.models import default_model_path
from tunesmith.models.config import ModelConfig

from data_helpers import chat

LONG_ANSWER = "The parcel is in transit and should arrive on Friday before noon at your front door. " * 6


@pytest.fixture(scope="module")
def tokenizer():
    return load_chat_tokenizer(ModelConfig(path=str(default_model_path())))


def _length(tokenizer, row):
    return len(tokenize_conversation(tokenizer, row["messages"], tools=row.get("tools")).input_ids)


def test_length_is_the_training_length(tokenizer):
    checker = LengthChecker(tokenizer, max_seq_len=4096, truncate=False)
    row = chat("Where is my parcel?", LONG_ANSWER, system="Be brief.")
    kept, length, cut = checker.fit(row)
    assert kept is row and not cut and length == _length(tokenizer, row)


def test_overlong_is_dropped_or_truncated_by_whole_turns(tokenizer):
    first = chat("Where is my parcel?", "On its way.")
    row = {"messages": first["messages"] + [{"role": "user", "content": "When exactly?"},
                                           {"role": "assistant", "content": LONG_ANSWER}]}
    full, short = _length(tokenizer, row), _length(tokenizer, first)
    limit = (full + short) // 2
    with pytest.raises(Reject) as err:
        LengthChecker(tokenizer, max_seq_len=limit, truncate=False).fit(row)
    assert err.value.rule == "overlong" and f"{full:,} tokens" in err.value.message
    cut, length, truncated = LengthChecker(tokenizer, max_seq_len=limit, truncate=True).fit(row)
    assert truncated and cut["messages"] == first["messages"] and length == short
    with pytest.raises(Reject) as err:  # not even the first exchange fits: nothing to keep
        LengthChecker(tokenizer, max_seq_len=short // 2, truncate=True).fit(first)
    assert err.value.rule == "overlong"


def test_text_is_cut_at_the_token_limit(tokenizer):
    text = {"text": LONG_ANSWER * 3}
    cut, length, truncated = LengthChecker(tokenizer, max_seq_len=40, truncate=True).fit(text)
    assert truncated and length <= 40 and len(tokenizer(cut["text"])["input_ids"]) == length
    assert LONG_ANSWER.startswith(cut["text"][:50]) and len(cut["text"]) < len(text["text"])


def test_overlong_preference_pairs_are_dropped_even_when_truncating(tokenizer):
    pair = {"prompt": [{"role": "user", "content": "Where?"}], "chosen": [{"role": "assistant", "content": LONG_ANSWER}],
            "rejected": [{"role": "assistant", "content": "No idea."}]}
    with pytest.raises(Reject, match="tokens"):
        LengthChecker(tokenizer, max_seq_len=30, truncate=True).fit(pair)
    _, length, _ = LengthChecker(tokenizer, max_seq_len=4096, truncate=True).fit(pair)
    assert length == _length(tokenizer, {"messages": pair["prompt"] + pair["chosen"]})


def test_template_errors_become_a_rule(tokenizer):
    strict = tokenizer.__class__.from_pretrained(str(default_model_path()))
    strict.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                            "{{ raise_exception('no system role') }}{% endif %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(Reject) as err:
        LengthChecker(strict, max_seq_len=512, truncate=False).fit(chat("q", "a", system="s"))
    assert err.value.rule == "template_error"


def test_prepare_with_a_model_counts_tokens(tickets, tmp_path):
    out = prepare.run(DataPrepareConfig(inputs=[tickets / "dirty.jsonl"], out=tmp_path / "out",
                                        model=str(default_model_path()), max_seq_len=100)).out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["length"]["unit"] == "tokens" and manifest["length"]["summary"]["max"] <= 100
    assert manifest["counts"]["rejected"]["overlong"] >= 1
    overlong = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()
                if '"overlong"' in line]
    assert all(int(r["message"].split()[0].replace(",", "")) > 100 for r in overlong)
    assert "transformers" in manifest["libraries"]


def test_inspect_marks_exactly_the_trained_tokens(tickets, tokenizer):
    # Line 3 of the demo's dirty file has a first answer with weight 0 and a second with weight 1.
    lines = (tickets / "dirty.jsonl").read_text(encoding="utf-8", errors="replace").splitlines()
    row = json.loads(lines[2])
    assert [m.get("weight") for m in row["messages"] if m["role"] == "assistant"] == [0, 1]
    result = inspect.run(DataInspectConfig(inputs=[tickets / "dirty.jsonl"], model=str(default_model_path()), line=3))
    trained = [text for text, is_trained in result.segments if is_trained]
    assert trained == [row["messages"][-1]["content"] + "<|im_end|>"]
    assert "".join(text for text, _ in result.segments).count(row["messages"][-3]["content"]) == 1
    assert result.trained_tokens == len(tokenizer(row["messages"][-1]["content"] + "<|im_end|>",
                                                  add_special_tokens=False)["input_ids"])
    assert result.stats.rejected["too_long"] == 1
