"""Scores of generated answers against references.

Corpus-level metrics come from the libraries the field uses (sacrebleu for BLEU and chrF,
rouge-score for ROUGE-L, jsonschema for schema compliance). Accuracy and macro-F1 are a few lines
written here rather than pulling in scikit-learn for them. Every example also gets per-example
scores (`ExampleScores`), which the base-vs-tuned comparison and the regression check use.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from tunesmith.errors import ConfigError

MISSING = "<missing>"  # the prediction of a field an output did not contain (or invalid JSON)

# Label auto-detection: references that are short one-liners from a small set are class labels.
_MAX_LABEL_CLASSES = 20
_MAX_LABEL_CHARS = 40


@dataclass
class TaskSpec:
    """What kind of answers the references are, which decides the metrics and the per-example score."""

    json_fields: list[str] = field(default_factory=list)
    labels: bool = False
    json_answers: bool = False
    schema: Optional[dict[str, Any]] = None

    @property
    def primary(self) -> str:
        """The per-example score that decides wins, ties and regressions."""
        if self.json_fields:
            return "field_accuracy"
        if self.labels:
            return "exact_match"
        return "chrf"

    @property
    def pass_score(self) -> float:
        """Default score at or above which an answer counts as handled well."""
        return 50.0 if self.primary == "chrf" else 1.0


def parse_json(text: str) -> Any:
    """The JSON value of `text`, or None. A ```json fenced block is accepted, as chat models
    often wrap JSON that way."""
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.strip("`")
        stripped = stripped[4:] if stripped.lower().startswith("json") else stripped
    try:
        return json.loads(stripped)
    except (json.JSONDecodeError, ValueError):
        return None


def load_schema(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    import jsonschema

    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the JSON Schema {path}: {exc}", hint="pass a JSON Schema file") from None
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigError(f"{path} is not a valid JSON Schema: {exc.message}") from None
    return schema


def detect_task(references: Sequence[str], *, json_fields: Sequence[str] = (), labels: bool | None = None,
                schema: dict[str, Any] | None = None) -> TaskSpec:
    """Decide how to score from the references unless the user said so."""
    json_answers = sum(isinstance(parse_json(r), (dict, list)) for r in references) * 2 >= len(references)
    if labels is None:
        distinct = set(r.strip() for r in references)
        labels = (not json_fields and not json_answers and len(distinct) <= _MAX_LABEL_CLASSES
                  and len(distinct) < len(references)
                  and all("\n" not in r.strip() and len(r.strip()) <= _MAX_LABEL_CHARS for r in references))
    return TaskSpec(json_fields=list(json_fields), labels=bool(labels),
                    json_answers=json_answers or bool(json_fields) or schema is not None, schema=schema)


def field_value(parsed: Any, name: str) -> str:
    """A JSON field as a comparable label (nested fields with dots: `a.b`)."""
    node = parsed
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node.strip() if isinstance(node, str) else json.dumps(node, sort_keys=True)


def accuracy(gold: Sequence[str], predicted: Sequence[str]) -> float:
    return sum(g == p for g, p in zip(gold, predicted)) / len(gold) if gold else 0.0


def macro_f1(gold: Sequence[str], predicted: Sequence[str]) -> float:
    """Mean F1 over the classes present in `gold`. A prediction outside those classes (a missing
    field, an invented label) is a miss for the true class and a false positive for no class
    that is averaged."""
    classes = sorted(set(gold))
    if not classes:
        return 0.0
    scores = []
    for c in classes:
        tp = sum(g == c and p == c for g, p in zip(gold, predicted))
        fp = sum(g != c and p == c for g, p in zip(gold, predicted))
        fn = sum(g == c and p != c for g, p in zip(gold, predicted))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


def _schema_ok(validator, parsed: Any) -> bool:
    return parsed is not None and not any(True for _ in validator.iter_errors(parsed))


@dataclass
class ExampleScores:
    exact_match: float
    chrf: float
    num_tokens: int
    stopped: bool
    json_valid: Optional[float] = None
    schema_valid: Optional[float] = None
    field_accuracy: Optional[float] = None
    fields: dict[str, str] = field(default_factory=dict)

    def primary(self, task: TaskSpec) -> float:
        return float(getattr(self, task.primary))

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None and v != {}}


def score_examples(outputs: Sequence[str], references: Sequence[str], num_tokens: Sequence[int],
                   stopped: Sequence[bool], task: TaskSpec) -> list[ExampleScores]:
    from sacrebleu.metrics import CHRF

    chrf = CHRF()
    validator = None
    if task.schema is not None:
        import jsonschema

        validator = jsonschema.validators.validator_for(task.schema)(task.schema)
    scores = []
    for out, ref, n, stop in zip(outputs, references, num_tokens, stopped):
        parsed = parse_json(out) if task.json_answers else None
        s = ExampleScores(
            exact_match=float(out.strip() == ref.strip()),
            chrf=chrf.sentence_score(out, [ref]).score,
            num_tokens=n, stopped=stop,
        )
        if task.json_answers:
            s.json_valid = float(parsed is not None)
        if validator is not None:
            s.schema_valid = float(_schema_ok(validator, parsed))
        if task.json_fields:
            gold = parse_json(ref)
            s.fields = {f: field_value(parsed, f) for f in task.json_fields}
            s.field_accuracy = sum(s.fields[f] == field_value(gold, f) for f in task.json_fields) / len(task.json_fields)
        scores.append(s)
    return scores


def corpus_metrics(outputs: Sequence[str], references: Sequence[str], scores: Sequence[ExampleScores],
                   task: TaskSpec, perplexity: float | None = None) -> dict[str, float]:
    """Every corpus-level metric for one model's outputs, as a flat name -> value mapping.

    Shares (exact match, accuracy, F1, validity, stop rate) are fractions in [0, 1]; BLEU, chrF
    and ROUGE-L are on sacrebleu's / rouge-score's 0-100 scale (ROUGE-L F-measure times 100).
    """
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU, CHRF

    n = len(outputs)
    metrics: dict[str, float] = {}
    if perplexity is not None:
        metrics["perplexity"] = perplexity
    metrics["exact_match"] = sum(s.exact_match for s in scores) / n
    if task.labels:
        gold = [r.strip() for r in references]
        predicted = [o.strip() for o in outputs]
        metrics["label_accuracy"] = accuracy(gold, predicted)
        metrics["label_macro_f1"] = macro_f1(gold, predicted)
    for name in task.json_fields:
        gold = [field_value(parse_json(r), name) for r in references]
        predicted = [s.fields[name] for s in scores]
        metrics[f"{name}_accuracy"] = accuracy(gold, predicted)
        metrics[f"{name}_macro_f1"] = macro_f1(gold, predicted)
    if task.json_fields:
        metrics["field_accuracy"] = sum(s.field_accuracy or 0.0 for s in scores) / n
    if task.json_answers:
        metrics["json_valid"] = sum(s.json_valid or 0.0 for s in scores) / n
    if task.schema is not None:
        metrics["schema_valid"] = sum(s.schema_valid or 0.0 for s in scores) / n
    metrics["bleu"] = BLEU().corpus_score(list(outputs), [list(references)]).score
    metrics["chrf"] = CHRF().corpus_score(list(outputs), [list(references)]).score
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    metrics["rouge_l"] = 100 * sum(scorer.score(r, o)["rougeL"].fmeasure for o, r in zip(outputs, references)) / n
    metrics["stop_rate"] = sum(s.stopped for s in scores) / n
    lengths = [s.num_tokens for s in scores]
    metrics["output_tokens_mean"] = statistics.fmean(lengths)
    metrics["output_tokens_median"] = float(statistics.median(lengths))
    return metrics


# Whether a larger value of a metric is better; the comparison uses it to colour deltas and
# the report to say which model won each row.
LOWER_IS_BETTER = {"perplexity"}
NEUTRAL = {"output_tokens_mean", "output_tokens_median"}


__all__ = ["LOWER_IS_BETTER", "MISSING", "NEUTRAL", "ExampleScores", "TaskSpec", "accuracy", "corpus_metrics",
           "detect_task", "field_value", "load_schema", "macro_f1", "parse_json",
           "score_examples"]
