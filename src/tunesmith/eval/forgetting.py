"""Forgetting: the previous version and the model under evaluation, side by side on what the
previous version was good at.

`tunesmith eval --model runs/v2 --forgetting tickets@1` (a registry name or a training run
directory) scores both models, with the same generation settings, on:

- the previous version's eval set: `--forgetting-data`, else the test split beside the data its
  run trained on (what `data prepare` wrote next to train.jsonl), else its validation file;
- the regression set (`--regression`), when given, with the prompts each model fails.

Each model renders prompts with its own tokenizer and chat template, as it would be served. The
result is `metrics.json`'s `forgetting` entry, a table in the summary and a report section.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any, Callable

from tunesmith.errors import ConfigError
from tunesmith.eval import compare, generate as gen, metrics as m

LOST = "lost"  # a metric that got worse beyond the tie tolerance


def previous_eval_set(run_dir: Path, manifest: dict[str, Any]) -> Path:
    """The held-out set of the data a run trained on: test.jsonl beside its training files, else its val.jsonl."""
    recorded = [Path(e["path"]) for e in manifest.get("inputs", {}).get("data", []) if "path" in e]
    for name in ("test.jsonl", "val.jsonl"):
        for directory in dict.fromkeys(p.parent for p in recorded):
            if (directory / name).is_file():
                return directory / name
    raise ConfigError(f"--forgetting: the run {run_dir} records no test or validation file to evaluate on",
                      hint="pass the previous version's eval set with --forgetting-data FILE")


def _rows(previous: dict[str, float], current: dict[str, float]) -> list[dict[str, Any]]:
    rows = []
    for row in compare.side_by_side(previous, current):
        if row.base is None or row.tuned is None:
            continue
        better = row.better
        rows.append({"metric": row.name, "previous": row.base, "current": row.tuned, "delta": row.delta,
                     "change": {"tuned": "better", "base": LOST, "same": "same"}.get(better, "")})
    return rows


def evaluate(cfg, current_model, current_tokenizer, score: Callable[..., dict[str, Any]],
             say: Callable[[str], None], reuse: dict[Path, dict[str, Any]], regression_task: m.TaskSpec
             ) -> dict[str, Any]:
    """Score the previous version and the current model on the forgetting sets. `score(model,
    tokenizer, examples, task, label)` is the eval stage's scorer; `reuse` maps a data path to the
    current model's result on it when the stage already has it (the main set, the regression set).
    The regression set is scored as the stage scores it (`regression_task`, the main set's task)."""
    from tunesmith.models.source import load_source, resolve_source
    from tunesmith.registry.sources import resolve_run

    previous = resolve_run(cfg.forgetting, cfg.registry, field="--forgetting")
    data = Path(cfg.forgetting_data) if cfg.forgetting_data else previous_eval_set(previous.run_dir,
                                                                                  previous.manifest())
    sets = {"eval": data, **({"regression": Path(cfg.regression)} if cfg.regression else {})}
    examples = {name: gen.read_examples(path, cfg.limit if name == "eval" else None) for name, path in sets.items()}
    schema = m.load_schema(cfg.json_schema)
    tasks = {"eval": m.detect_task([ex.reference for ex in examples["eval"]], json_fields=cfg.json_fields,
                                   labels=cfg.labels, schema=schema), "regression": regression_task}

    current = {}
    for name, exs in examples.items():
        cached = reuse.get(sets[name].resolve())
        current[name] = cached if cached is not None and len(cached["scores"]) == len(exs) else \
            score(current_model, current_tokenizer, exs, tasks[name], f"forgetting {name} set, current")
    say(f"forgetting: loading the previous version {previous.label}")
    source = resolve_source(str(previous.run_dir))
    model, tokenizer = load_source(source, device=cfg.device, dtype=cfg.dtype, quantization=cfg.quantization)
    try:
        before = {name: score(model, tokenizer, exs, tasks[name], f"forgetting {name} set, previous")
                  for name, exs in examples.items()}
    finally:
        del model
        gc.collect()

    result: dict[str, Any] = {"previous": previous.label, "previous_run": str(previous.run_dir), "sets": {}}
    for name, exs in examples.items():
        task = tasks[name]
        entry: dict[str, Any] = {"data": str(sets[name]), "examples": len(exs), "metric": task.primary,
                                 "rows": _rows(before[name]["metrics"], current[name]["metrics"])}
        if name == "regression":
            min_score = cfg.regression_min_score if cfg.regression_min_score is not None else task.pass_score
            passed_before = [s.primary(task) >= min_score for s in before[name]["scores"]]
            passed_now = [s.primary(task) >= min_score for s in current[name]["scores"]]
            entry.update({"min_score": min_score, "previous_passed": sum(passed_before),
                          "current_passed": sum(passed_now),
                          "lost": [i for i, (b, c) in enumerate(zip(passed_before, passed_now)) if b and not c]})
        result["sets"][name] = entry
    return result


def markdown(forgetting: dict[str, Any]) -> str:
    """The report section: one table per set."""
    parts = [f"Previous version: `{forgetting['previous']}`; a metric marked *lost* got worse."]
    for name, entry in forgetting["sets"].items():
        parts.append(f"**{name} set** (`{entry['data']}`, {entry['examples']} examples)")
        lines = ["| metric | previous | current | delta | |", "|---|---|---|---|---|"]
        lines += [f"| {r['metric']} | {r['previous']:.4g} | {r['current']:.4g} | {r['delta']:+.4g} | {r['change']} |"
                  for r in entry["rows"]]
        parts.append("\n".join(lines))
        if name == "regression":
            parts.append(f"Prompts passed (`{entry['metric']}` >= {entry['min_score']}): previous "
                         f"{entry['previous_passed']}, current {entry['current_passed']} of {entry['examples']}; "
                         f"lost: {entry['lost'] or 'none'}.")
    return "\n\n".join(parts)
