"""The demo's preference pairs: reproducible, chosen = the correct JSON, rejected = the named failure."""

from __future__ import annotations

import json
from collections import Counter

from tunesmith.data.config import DemoDataConfig
from tunesmith.data import demo
from tunesmith.data.formats import detect
from tunesmith.data.preference_demo import FAILURES


def test_preference_files_are_reproducible_and_each_rejected_answer_fails_as_named(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        demo.run(DemoDataConfig(out=out, seed=3, train_size=100, test_size=30))
    for name in ("preference_train.jsonl", "preference_test.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    pairs = [json.loads(line) for line in (a / "preference_train.jsonl").read_text().splitlines()]
    conversations = [json.loads(line) for line in (a / "train.jsonl").read_text().splitlines()]
    assert detect(pairs[:50], "preference_train.jsonl") == "preference"
    assert Counter(p["meta"]["failure"] for p in pairs) == {k: 20 for k in FAILURES}
    for pair, conversation in zip(pairs, conversations):
        chosen, rejected = pair["chosen"][0]["content"], pair["rejected"][0]["content"]
        assert pair["prompt"] + pair["chosen"] == conversation["messages"]
        good = json.loads(chosen)
        kind = pair["meta"]["failure"]
        if kind in ("wrong_priority", "wrong_category", "missing_field"):
            bad = json.loads(rejected)
            field = {"wrong_priority": "priority", "wrong_category": "category"}.get(kind)
            if field:
                assert bad[field] != good[field] and {k: v for k, v in bad.items() if k != field} == \
                    {k: v for k, v in good.items() if k != field}
            else:
                assert set(bad) < set(good)
        elif kind == "prose_around_json":
            assert chosen in rejected and rejected != chosen
        else:  # run_on: the right JSON, then more text instead of stopping
            assert rejected.startswith(chosen) and len(rejected) > len(chosen) + 20
    held_out = {json.dumps(p["prompt"]) for p in map(json.loads, (a / "preference_test.jsonl").read_text().splitlines())}
    assert not held_out & {json.dumps(p["prompt"]) for p in pairs}
