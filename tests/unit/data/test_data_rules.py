"""Every rejection rule: the demo's dirty file breaks each one on a known line, and the rules the
demo does not cover are triggered here directly."""

from __future__ import annotations

import random

import pytest

from tunesmith.data import demo
from tunesmith.data.config import DataChecksConfig, DemoDataConfig
from tunesmith.data.pipeline import Checks, Kept, Rejected
from tunesmith.data.rules import RULES, Reject
from tunesmith.data.validate import validate

from data_helpers import chat


def _outcomes(paths, **settings):
    checks = Checks(DataChecksConfig(inputs=list(paths), **settings))
    return list(checks.run()), checks.stats


def test_dirty_file_breaks_each_rule_on_its_line(tickets):
    cfg = DemoDataConfig()
    generated = demo.dirty_rows(random.Random(f"{cfg.seed}-dirty"), cfg)
    assert b"".join(raw + b"\n" for _, raw in generated) == (tickets / "dirty.jsonl").read_bytes()
    expected = [rule for rule, _ in generated]
    # The generator labels the copy it added; after shuffling, the copy may come first, and the
    # later of the two lines is the one a reader sees as the duplicate.
    copy = expected.index("duplicate")
    original = next(i for i, (_, raw) in enumerate(generated) if raw == generated[copy][1] and i != copy)
    expected[copy], expected[original] = None, None
    expected[max(copy, original)] = "duplicate"
    outcomes, stats = _outcomes([tickets / "dirty.jsonl"])
    got = [o.finding.rule if isinstance(o, Rejected) else None for o in outcomes]
    assert got == expected
    assert set(demo.DIRTY_RULES) <= set(RULES)
    assert set(stats.rejected) == set(demo.DIRTY_RULES)
    for outcome in outcomes:
        if isinstance(outcome, Rejected):
            assert outcome.finding.source == str(tickets / "dirty.jsonl")
            assert outcome.finding.line == outcomes.index(outcome) + 1
            assert outcome.finding.message


def test_the_duplicate_names_the_line_it_repeats(tickets):
    outcomes, _ = _outcomes([tickets / "dirty.jsonl"])
    duplicate = next(o for o in outcomes if isinstance(o, Rejected) and o.finding.rule == "duplicate")
    first_line = int(duplicate.finding.message.rsplit(":", 1)[1])
    assert outcomes[first_line - 1].record.value == duplicate.record.value


@pytest.mark.parametrize("row, rule", [
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                   {"role": "assistant", "content": "c"}]}, "bad_role_order"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                   {"role": "assistant", "content": "c"}]}, "bad_role_order"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"},
                   {"role": "assistant", "content": "c"}]}, "bad_role_order"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                   {"role": "user", "content": "c"}]}, "bad_role_order"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0}]},
     "no_assistant_turn"),
    ({"messages": []}, "missing_messages"),
    ({"text": "  \n"}, "empty_content"),
    ({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "same"}],
      "rejected": [{"role": "assistant", "content": "same"}]}, "identical_pair"),
    ({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "user", "content": "x"}],
      "rejected": [{"role": "assistant", "content": "y"}]}, "bad_role_order"),
    ({"prompt": [{"role": "user", "content": "q"}], "chosen": [],
      "rejected": [{"role": "assistant", "content": "y"}]}, "no_assistant_turn"),
    ({"text": "x" * 101}, "too_long"),
])
def test_validation_rules(row, rule):
    with pytest.raises(Reject) as err:
        validate(row, max_chars=100)
    assert err.value.rule == rule


def test_valid_rows_pass():
    tool_turns = {"messages": [
        {"role": "system", "content": "s"}, {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "f"}}]},
        {"role": "tool", "content": "r"}, {"role": "tool", "content": "r2"}, {"role": "assistant", "content": "a"}]}
    for row in (chat("q", "a", system="s"), tool_turns, {"text": "t"},
                {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
                 "rejected": [{"role": "assistant", "content": "b"}]}):
        validate(row, max_chars=100)


def test_mixed_kinds_are_rejected_after_the_first_kind(write_jsonl):
    path = write_jsonl([chat("q1", "a1"), {"prompt": "q", "chosen": "a", "rejected": "b"}, chat("q2", "a2")])
    outcomes, stats = _outcomes([path], format="openai")
    # With the format forced, the preference row has no `messages`.
    assert [isinstance(o, Kept) for o in outcomes] == [True, False, True]
    text = write_jsonl([{"text": "plain"}], name="text.jsonl")
    outcomes, stats = _outcomes([path, text])
    assert stats.rejected["mixed_kind"] == 1 and stats.kind == "sft"


def test_pii_drop_and_near_duplicate_rules(write_jsonl):
    text = "The parcel with the blue label was left at the wrong door, on the third floor, yesterday evening."
    path = write_jsonl([
        chat(text, "We will collect it."),
        # Same words, other punctuation and case: not an exact copy, but a near one.
        chat(text.replace(",", "").lower(), "We will collect it!"),
        chat("The invoice for March lists a plan we never ordered.", "We will correct it."),
        chat("Mail me at jo@example.org", "Done."),
    ])
    outcomes, stats = _outcomes([path], pii="drop")
    rules = [o.finding.rule if isinstance(o, Rejected) else None for o in outcomes]
    assert rules == [None, "near_duplicate", None, "pii"]
    pii_reject = outcomes[3]
    # rejected.jsonl shows the record with the personal data already redacted.
    assert "<EMAIL>" in pii_reject.shown["messages"][0]["content"]
    assert "jo@example.org" not in str(pii_reject.shown)


def test_every_rule_is_documented():
    docs = (__import__("pathlib").Path(__file__).resolve().parents[3] / "docs" / "data.md").read_text()
    for name in RULES:
        assert f"`{name}`" in docs, name
