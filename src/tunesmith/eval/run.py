"""`tunesmith eval`: generate on a test set, score, compare with the base model, write a report.

    tunesmith eval --model runs/sft --data examples/data/tickets/test.jsonl --compare-base --out eval/

The tuned model and, with `compare_base`, its base model answer the same prompts with the same
generation settings; the base of a LoRA run is the same loaded model with its adapter disabled,
so no second copy is loaded.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

from tunesmith.errors import ConfigError
from tunesmith.eval import compare, generate as gen, metrics as m
from tunesmith.eval.config import EvalConfig
from tunesmith.eval.report import write_report
from tunesmith.manifest import write_stage_record
from tunesmith.models.source import ModelSource, load_source, resolve_source
from tunesmith.rendering import as_text


def _kind(task: m.TaskSpec) -> str:
    if task.json_fields:
        return f"JSON fields ({', '.join(task.json_fields)})"
    if task.labels:
        return "class labels"
    return "JSON text" if task.json_answers else "free text"


class _Models:
    """The tuned model and a way to get the base model's view of it (or a separately loaded base)."""

    def __init__(self, cfg: EvalConfig, source: ModelSource, say: Callable[[str], None]):
        self.cfg, self.source, self.say = cfg, source, say
        self.tuned, self.tokenizer = load_source(source, device=cfg.device, dtype=cfg.dtype,
                                                 quantization=cfg.quantization)
        self._base = None

    @contextlib.contextmanager
    def base(self):
        if self.source.kind == "adapter" and self.cfg.base is None:
            with gen.base_model_view(self.tuned) as model:
                yield model
            return
        if self._base is None:
            base_path = self.cfg.base or self.source.base
            if base_path is None:
                raise ConfigError(
                    f"{self.source.given} does not record its base model, so --compare-base has nothing to compare with",
                    hint="pass the base with --base MODEL",
                )
            self.say(f"loading base model {base_path}")
            base_source = resolve_source(base_path)
            # The tuned tokenizer renders the base's prompts too: a comparison must show both models
            # the same tokens (training may have added the chat template the base lacked).
            self._base, _ = load_source(base_source, device=self.cfg.device, dtype=self.cfg.dtype,
                                        quantization="none" if self.cfg.quantization == "auto" else self.cfg.quantization,
                                        tokenizer=self.tokenizer)
        yield self._base


def _evaluate(model, tokenizer, examples, cfg: EvalConfig, task: m.TaskSpec, label: str) -> dict[str, Any]:
    started = time.perf_counter()
    generations = gen.generate(model, tokenizer, examples, cfg.generation, description=f"{label}: generating")
    seconds = time.perf_counter() - started
    nlls = gen.assistant_nll(model, tokenizer, examples, cfg.generation.batch_size) if cfg.perplexity else None
    outputs = [g.text for g in generations]
    references = [ex.reference for ex in examples]
    scores = m.score_examples(outputs, references, [g.num_tokens for g in generations],
                              [g.stopped for g in generations], task)
    corpus = m.corpus_metrics(outputs, references, scores, task, gen.perplexity(nlls) if nlls else None)
    speed = {"seconds": round(seconds, 2), "examples_per_s": round(len(examples) / max(seconds, 1e-9), 3),
             "generated_tokens_per_s": round(sum(g.num_tokens for g in generations) / max(seconds, 1e-9), 1)}
    return {"outputs": outputs, "scores": scores, "metrics": corpus, "speed": speed}


@dataclass
class EvalResult:
    """The scores (as in metrics.json) and the directory holding them, the samples and the report."""

    out: Path
    metrics: dict[str, Any]

    def summary(self) -> str:
        return as_text(self._print)

    def _print(self, console: Console) -> None:
        result = self.metrics
        table = Table(title=f"{result['model']} on {result['examples']} examples")
        table.add_column("metric")
        compare = "base" in result
        for column in (("base", "tuned", "delta") if compare else ("value",)):
            table.add_column(column, justify="right")
        for name, value in result["tuned"].items():
            if compare:
                delta = result["delta"].get(name)
                table.add_row(name, f"{result['base'][name]:.4g}", f"{value:.4g}",
                              "" if delta is None else f"{delta:+.4g}")
            else:
                table.add_row(name, f"{value:.4g}")
        console.print(table)
        if compare:
            wins = result["win_rate"]
            console.print(f"per-example ({wins['metric']}): tuned better {wins['tuned_win_rate']:.0%}, "
                          f"base better {wins['base_win_rate']:.0%}, ties {wins['tie_rate']:.0%}", markup=False)
        if "regression" in result:
            console.print(f"regressions: {result['regression']['tuned_failed']} of {result['regression']['prompts']} "
                          "prompts the base handled well now fail")
        if "forgetting" in result:
            _print_forgetting(console, result["forgetting"])
        console.print(f"wrote {self.out}/ (metrics.json, samples.jsonl, report.md, report.html)", markup=False)


def _print_forgetting(console: Console, forgetting: dict[str, Any]) -> None:
    for name, entry in forgetting["sets"].items():
        table = Table(title=f"forgetting: {forgetting['previous']} vs this model on the {name} set "
                            f"({entry['examples']} examples)")
        for column in ("metric", "previous", "current", "delta", ""):
            table.add_column(column, justify="left" if column in ("metric", "") else "right")
        for row in entry["rows"]:
            table.add_row(row["metric"], f"{row['previous']:.4g}", f"{row['current']:.4g}", f"{row['delta']:+.4g}",
                          row["change"])
        console.print(table)
        if name == "regression":
            console.print(f"regression prompts passed: previous {entry['previous_passed']}, current "
                          f"{entry['current_passed']} of {entry['examples']}", markup=False)


def run(cfg: EvalConfig, *, say: Callable[[str], None] = print) -> EvalResult:
    """Run the evaluation described by `cfg`; returns the metrics written to metrics.json."""
    examples = gen.read_examples(cfg.data, cfg.limit)  # bad data fails before any model loads
    source = resolve_source(cfg.model)
    schema = m.load_schema(cfg.json_schema)
    task = m.detect_task([ex.reference for ex in examples], json_fields=cfg.json_fields, labels=cfg.labels,
                         schema=schema)
    regression_examples = gen.read_examples(cfg.regression) if cfg.regression else None
    if cfg.judge.url and not cfg.compare_base:
        raise ConfigError("the LLM judge compares tuned and base answers, so it needs --compare-base",
                          hint="add --compare-base, or drop --judge-url")
    say(f"evaluating {source.display_name} ({source.kind}) on {len(examples)} examples from {cfg.data}")
    models = _Models(cfg, source, say)
    tokenizer = models.tokenizer

    tuned = _evaluate(models.tuned, tokenizer, examples, cfg, task, "tuned")
    base = None
    if cfg.compare_base:
        with models.base() as base_model:
            base = _evaluate(base_model, tokenizer, examples, cfg, task, "base")
    if getattr(cfg, "preference", None):  # held-out preference pairs: accuracy and margin, next to the rest
        from tunesmith.eval.preference import evaluate as evaluate_preference

        figures = evaluate_preference(models, cfg.preference, cfg.generation.batch_size, cfg.compare_base, say=say)
        tuned["metrics"].update(figures["tuned"])
        if base is not None:
            base["metrics"].update(figures["base"])

    rows = compare.side_by_side(base["metrics"] if base else {}, tuned["metrics"])
    result: dict[str, Any] = {
        "model": source.display_name, "model_path": str(source.given), "kind": source.kind,
        "base_model": cfg.base or source.base, "data": str(cfg.data), "examples": len(examples),
        "task": {"kind": _kind(task), "primary": task.primary, "json_fields": task.json_fields,
                 "labels": task.labels, "json_answers": task.json_answers, "schema": str(cfg.json_schema or "") or None},
        "generation": cfg.generation.model_dump(),
        "tuned": tuned["metrics"],
        "generation_speed": {"tuned": tuned["speed"], **({"base": base["speed"]} if base else {})},
    }
    say("generation: " + "; ".join(f"{name} {v['examples_per_s']:.2f} examples/s, {v['generated_tokens_per_s']:.0f} "
                                   f"tokens/s" for name, v in result["generation_speed"].items()))
    winners = None
    if base is not None:
        winners = [compare.winner(b, t, task) for b, t in zip(base["scores"], tuned["scores"])]
        result["base"] = base["metrics"]
        result["delta"] = {r.name: r.delta for r in rows if r.delta is not None}
        result["win_rate"] = compare.win_rate(winners, task)

    if cfg.judge.url:
        from tunesmith.eval.judge import run_judge

        say(f"asking judge {cfg.judge.model} at {cfg.judge.url} (both orders per pair)")
        result["judge"] = run_judge(cfg.judge, [ex.prompt for ex in examples], [ex.reference for ex in examples],
                                    tuned["outputs"], base["outputs"])

    reg_tuned = None
    if regression_examples is not None:
        reg_tuned = _evaluate(models.tuned, tokenizer, regression_examples, cfg, task, "regression set, tuned")
        reg_base = None
        if cfg.compare_base:
            with models.base() as base_model:
                reg_base = _evaluate(base_model, tokenizer, regression_examples, cfg, task, "regression set, base")
        min_score = cfg.regression_min_score if cfg.regression_min_score is not None else task.pass_score
        result["regression"] = compare.regressions(
            [ex.prompt for ex in regression_examples], [ex.reference for ex in regression_examples],
            reg_tuned["outputs"], reg_tuned["scores"], task, min_score,
            base_outputs=reg_base["outputs"] if reg_base else None, base=reg_base["scores"] if reg_base else None)

    if cfg.forgetting:
        from tunesmith.eval import forgetting

        reuse = {Path(cfg.data).resolve(): tuned, **({Path(cfg.regression).resolve(): reg_tuned} if reg_tuned else {})}
        result["forgetting"] = forgetting.evaluate(
            cfg, models.tuned, tokenizer, lambda model, tok, exs, t, label: _evaluate(model, tok, exs, cfg, t, label),
            say, reuse, task)

    if cfg.lm_eval_tasks:
        from tunesmith.eval.harness import run_lm_eval

        harness = {"tuned": run_lm_eval(models.tuned, tokenizer, cfg.lm_eval_tasks, limit=cfg.lm_eval_limit,
                                        batch_size=cfg.generation.batch_size)}
        if cfg.compare_base:
            with models.base() as base_model:
                harness["base"] = run_lm_eval(base_model, tokenizer, cfg.lm_eval_tasks, limit=cfg.lm_eval_limit,
                                              batch_size=cfg.generation.batch_size)
        result["lm_eval"] = harness

    samples = []
    for i, ex in enumerate(examples):
        sample: dict[str, Any] = {"index": ex.index, "prompt": ex.prompt, "reference": ex.reference,
                                  "tuned_output": tuned["outputs"][i]}
        scores = {"tuned": tuned["scores"][i].as_dict()}
        if base is not None:
            sample["base_output"] = base["outputs"][i]
            scores["base"] = base["scores"][i].as_dict()
            sample["winner"] = winners[i]
        sample["scores"] = scores
        samples.append(sample)
    lengths = {"tuned": [s.num_tokens for s in tuned["scores"]]}
    if base is not None:
        lengths["base"] = [s.num_tokens for s in base["scores"]]
    out = Path(cfg.out)
    written = write_report(out, result, rows, samples, lengths)
    inputs: dict[str, Any] = {"data": cfg.data}
    if source.adapter is not None:
        inputs["adapter"] = source.adapter.adapter_dir
    elif Path(source.weights).is_dir():
        inputs["model"] = source.weights
    if cfg.regression:
        inputs["regression"] = cfg.regression
    if "forgetting" in result:
        inputs["forgetting"] = [Path(e["data"]) for e in result["forgetting"]["sets"].values()]
    write_stage_record(out, "eval", cfg, inputs=inputs, outputs=written, seed=cfg.generation.seed,
                       extra={"model": source.given, "base_model": cfg.base or source.base})
    return EvalResult(out, result)


__all__ = ["EvalResult", "run"]
