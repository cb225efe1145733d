"""Every preference form the data stage reads becomes the same pair, and the same tokens."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from tunesmith.config import load_config
from tunesmith.data.config import DataPrepareConfig
from tunesmith.train.config import TrainConfig
from tunesmith.data import formats, prepare
from tunesmith.train.pairs import tokenize_preference_rows

SYSTEM = "Reply with JSON only."
QUESTION = "Subject: charged twice\n\nI was charged twice for order #1234."
GOOD = '{"category": "billing", "priority": "medium", "summary": "Charged twice for order #1234."}'
BAD = 'Sure! {"category": "billing"}'

FORMS = {
    "strings": {"system": SYSTEM, "prompt": QUESTION, "chosen": GOOD, "rejected": BAD},
    "message_lists": {"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
                      "chosen": [{"role": "assistant", "content": GOOD}],
                      "rejected": [{"role": "assistant", "content": BAD}]},
    "implicit_prompt": {"chosen": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION},
                                   {"role": "assistant", "content": GOOD}],
                        "rejected": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION},
                                     {"role": "assistant", "content": BAD}]},
    "sharegpt": {"system": SYSTEM, "conversations": [{"from": "human", "value": QUESTION}],
                 "chosen": {"from": "gpt", "value": GOOD}, "rejected": {"from": "gpt", "value": BAD}},
    "openai_dpo": {"input": {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]},
                   "preferred_output": [{"role": "assistant", "content": GOOD}],
                   "non_preferred_output": [{"role": "assistant", "content": BAD}]},
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_each_form_is_detected_and_read_as_the_same_pair(form):
    obj = FORMS[form]
    assert formats.detect([obj], "x.jsonl") == "preference"
    row, ignored = formats.normalise(obj, "preference")
    assert ignored == []
    assert row["prompt"] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    assert row["chosen"] == [{"role": "assistant", "content": GOOD}]
    assert row["rejected"] == [{"role": "assistant", "content": BAD}]


def test_openai_dpo_rows_missing_a_side_are_rejected_with_the_field():
    from tunesmith.data.rules import Reject

    broken = {**FORMS["openai_dpo"], "non_preferred_output": None}
    with pytest.raises(Reject, match="non_preferred_output"):
        formats.normalise(broken, "preference")
    with pytest.raises(Reject, match="input.messages"):
        formats.normalise({**FORMS["openai_dpo"], "input": {}}, "preference")


def test_prepared_files_of_every_form_tokenise_identically(tmp_path, tiny_model):
    """Through `data prepare` (validation, split) to the tokenised pair the trainer uses."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    settings = load_config(TrainConfig, None, [f"model={tiny_model}"]).train
    seen = []
    for form, obj in FORMS.items():
        raw = tmp_path / f"{form}.jsonl"
        raw.write_text(json.dumps(obj) + "\n")
        out = tmp_path / f"prepared-{form}"
        prepare.run(DataPrepareConfig(inputs=[raw], out=out, split={"train": 1.0, "val": 0.0, "test": 0.0}))
        rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
        data = tokenize_preference_rows(rows, tokenizer, settings, "train", "pairs")
        seen.append((data.examples[0]["chosen"], data.examples[0]["rejected"]))
    assert all(s == seen[0] for s in seen)
