"""Metric values on hand-made outputs whose answers are known."""

import json

import pytest

from tunesmith.eval import compare
from tunesmith.eval.metrics import (
    MISSING, accuracy, corpus_metrics, detect_task, field_value, macro_f1, parse_json, score_examples,
)


def _score(outputs, references, task, tokens=None, stopped=None):
    tokens = tokens or [len(o.split()) for o in outputs]
    stopped = stopped or [True] * len(outputs)
    scores = score_examples(outputs, references, tokens, stopped, task)
    return scores, corpus_metrics(outputs, references, scores, task)


def test_accuracy_and_macro_f1_on_labels():
    gold = ["spam", "spam", "ham", "ham", "ham"]
    predicted = ["spam", "ham", "ham", "ham", "spam"]
    assert accuracy(gold, predicted) == pytest.approx(3 / 5)
    # spam: tp 1 fp 1 fn 1 -> F1 0.5; ham: tp 2 fp 1 fn 1 -> F1 2/3
    assert macro_f1(gold, predicted) == pytest.approx((0.5 + 2 / 3) / 2)
    # A prediction outside the reference classes is a miss, never a credited class.
    assert macro_f1(["a", "b"], ["a", "zzz"]) == pytest.approx((1.0 + 0.0) / 2)


def test_label_task_is_detected_and_scored_on_whole_answers():
    references = ["positive", "negative", "positive", "neutral"]
    outputs = [" positive", "positive", "positive\n", "neutral"]
    task = detect_task(references)
    assert task.labels and task.primary == "exact_match"
    scores, metrics = _score(outputs, references, task)
    assert metrics["label_accuracy"] == pytest.approx(0.75)
    assert metrics["exact_match"] == pytest.approx(0.75)  # answers compare after stripping whitespace
    # positive: tp 2 fp 1 fn 0 -> 0.8; negative: tp 0 -> 0; neutral: tp 1 -> 1
    assert metrics["label_macro_f1"] == pytest.approx((0.8 + 0.0 + 1.0) / 3)


def test_json_fields_accuracy_f1_and_validity():
    refs = [json.dumps({"category": c, "priority": p, "summary": "s"})
            for c, p in [("billing", "low"), ("bug", "high"), ("billing", "urgent"), ("account", "low")]]
    outputs = [
        '{"category": "billing", "priority": "low", "summary": "other words"}',  # both fields right
        '```json\n{"category": "bug", "priority": "low"}\n```',                   # fenced; category right
        '{"category": "billing", "priority": "urgent"',                          # invalid JSON
        '{"priority": "low"}',                                                   # category missing
    ]
    task = detect_task(refs, json_fields=["category", "priority"])
    assert task.primary == "field_accuracy" and task.json_answers
    scores, metrics = _score(outputs, refs, task)
    assert [s.field_accuracy for s in scores] == [1.0, 0.5, 0.0, 0.5]
    assert scores[2].fields == {"category": MISSING, "priority": MISSING}
    assert metrics["json_valid"] == pytest.approx(0.75)
    assert metrics["category_accuracy"] == pytest.approx(0.5)
    assert metrics["priority_accuracy"] == pytest.approx(0.5)
    assert metrics["field_accuracy"] == pytest.approx(0.5)
    # category: billing tp1 fn1 -> 2/3, bug tp1 -> 1, account fn1 -> 0
    assert metrics["category_macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert metrics["exact_match"] == 0.0


def test_schema_compliance_counts_only_valid_instances():
    schema = {"type": "object", "required": ["category"],
              "properties": {"category": {"enum": ["billing", "bug"]}}}
    task = detect_task(['{"category": "bug"}'] * 3, schema=schema)
    _, metrics = _score(['{"category": "bug"}', '{"category": "other"}', "not json"], ['{"category": "bug"}'] * 3, task)
    assert metrics["schema_valid"] == pytest.approx(1 / 3)
    assert metrics["json_valid"] == pytest.approx(2 / 3)


def test_text_overlap_metrics_stop_rate_and_lengths():
    refs = ["the cat sat on the mat", "hello world"]
    task = detect_task(refs, labels=False)
    assert task.primary == "chrf"
    scores, perfect = _score(refs, refs, task, tokens=[6, 2], stopped=[True, False])
    assert perfect["bleu"] == pytest.approx(100.0)
    assert perfect["chrf"] == pytest.approx(100.0)
    assert perfect["rouge_l"] == pytest.approx(100.0)
    assert perfect["stop_rate"] == pytest.approx(0.5)
    assert perfect["output_tokens_mean"] == pytest.approx(4.0)
    _, disjoint = _score(["xyz qqq", "zzz"], refs, task)
    assert disjoint["bleu"] == 0.0 and disjoint["rouge_l"] == 0.0
    # ROUGE-L F-measure of one missing word: LCS 5, P 5/5, R 5/6.
    _, partial = _score(["the cat sat on mat", "hello world"], refs, task)
    assert partial["rouge_l"] == pytest.approx(100 * (2 * (5 / 6) / (1 + 5 / 6) + 1.0) / 2)


def test_parse_json_and_nested_fields():
    assert parse_json('```json\n{"a": 1}\n```') == {"a": 1}
    assert parse_json("nope") is None
    assert field_value({"a": {"b": "x "}}, "a.b") == "x"
    assert field_value({"a": 3}, "a") == "3"
    assert field_value(None, "a") == MISSING


def test_side_by_side_deltas_and_direction():
    rows = {r.name: r for r in compare.side_by_side({"perplexity": 10.0, "exact_match": 0.5, "output_tokens_mean": 9.0},
                                                    {"perplexity": 8.0, "exact_match": 0.25, "output_tokens_mean": 12.0})}
    assert rows["perplexity"].delta == pytest.approx(-2.0) and rows["perplexity"].better == "tuned"
    assert rows["exact_match"].delta == pytest.approx(-0.25) and rows["exact_match"].better == "base"
    assert rows["output_tokens_mean"].better is None


def test_win_rate_counts_ties_apart_and_regressions():
    refs = ['{"category": "a", "priority": "x"}'] * 4
    task = detect_task(refs, json_fields=["category", "priority"])
    base, _ = _score(['{"category": "a", "priority": "x"}', '{"category": "a"}', "bad", '{"category": "a"}'], refs, task)
    tuned, _ = _score(['{"category": "a", "priority": "x"}', '{"category": "a", "priority": "x"}', "bad",
                       '{"category": "b"}'], refs, task)
    winners = [compare.winner(b, t, task) for b, t in zip(base, tuned)]
    assert winners == ["tie", "tuned", "tie", "base"]
    rate = compare.win_rate(winners, task)
    assert (rate["tuned_wins"], rate["base_wins"], rate["ties"]) == (1, 1, 2)
    assert rate["tie_rate"] == pytest.approx(0.5)

    reg = compare.regressions([[{"role": "user", "content": str(i)}] for i in range(4)], refs,
                              ["o"] * 4, tuned, task, min_score=1.0, base_outputs=["b"] * 4, base=base)
    assert reg["tuned_failed"] == 2 and [f["index"] for f in reg["failures"]] == [2, 3]
    assert reg["base_failed"] == 3
    assert reg["failures"][1]["base_score"] == pytest.approx(0.5)
