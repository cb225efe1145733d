"""`tunesmith eval --forgetting PREVIOUS` on the embedded model: the previous version (here the LoRA
run trained on the first four demo tickets) and the model under evaluation (the untuned base, which
never learned them) scored side by side on the previous version's eval set and a regression set,
with the same figures a plain evaluation of the previous version gives."""

from __future__ import annotations

import json

import pytest

import tuned_helpers as helpers
from tunesmith.errors import ConfigError
from tunesmith.eval import run as eval_run
from tunesmith.eval.config import EvalConfig
from tunesmith.registry.aliases import Aliases
from tunesmith.registry.store import Registry

GENERATION = {"max_new_tokens": 16, "batch_size": 4}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("forgetting")
    eval_set = helpers.write_jsonl(root / "v1-test.jsonl", helpers.ticket_examples(4))
    regression = helpers.write_jsonl(root / "regression.jsonl", helpers.ticket_examples(6)[2:])
    registry = Registry(root / "registry.sqlite3")
    run_dir = helpers.lora_run()
    registry.add("tickets", source=f"run:{run_dir}", run_dir=run_dir, weights_path=run_dir / "adapter")
    Aliases(registry).promote("tickets@1", actor="test")
    registry.close()
    cfg = EvalConfig(model="default", data=helpers.TICKETS_TEST, limit=2, out=root / "out", regression=regression,
                     forgetting="tickets", forgetting_data=eval_set, registry=root / "registry.sqlite3",
                     json_fields=["category", "priority"], generation=GENERATION)
    # The previous version evaluated on its own, on the same sets, for the figures to agree with.
    alone = EvalConfig(model=str(run_dir), data=eval_set, limit=2, out=root / "alone", regression=regression,
                       json_fields=["category", "priority"], generation=GENERATION)
    with helpers.one_thread():
        result = eval_run.run(cfg, say=lambda *_: None)
        previous = eval_run.run(alone, say=lambda *_: None).metrics
    return cfg, result, previous


def test_the_previous_and_current_scores_stand_side_by_side(evaluated):
    cfg, result, previous = evaluated
    forgetting = json.loads((cfg.out / "metrics.json").read_text())["forgetting"]
    assert forgetting["previous"] == "tickets@1" and set(forgetting["sets"]) == {"eval", "regression"}
    eval_set = forgetting["sets"]["eval"]
    assert eval_set["examples"] == 2 and eval_set["data"]  # --limit applies to it too == str(cfg.forgetting_data)
    rows = {r["metric"]: r for r in eval_set["rows"]}
    for name, value in previous["tuned"].items():
        assert rows[name]["previous"] == pytest.approx(value)
        assert rows[name]["delta"] == pytest.approx(rows[name]["current"] - value)
    # The base never learned the tickets the previous version was trained on: it lost them.
    assert rows["perplexity"]["current"] > 1.25 * rows["perplexity"]["previous"], rows
    assert rows["perplexity"]["change"] == "lost" and rows["chrf"]["change"] == "lost", rows


def test_regression_prompts_count_what_each_model_passes(evaluated):
    _, result, previous = evaluated
    entry = result.metrics["forgetting"]["sets"]["regression"]
    assert entry["examples"] == 4
    assert entry["previous_passed"] == previous["regression"]["prompts"] - previous["regression"]["tuned_failed"]
    assert entry["current_passed"] == 4 - result.metrics["regression"]["tuned_failed"]
    assert all(0 <= i < 4 for i in entry["lost"]) and len(entry["lost"]) >= entry["previous_passed"] - \
        entry["current_passed"]


def test_the_summary_and_report_show_the_table(evaluated):
    cfg, result, _ = evaluated
    summary = result.summary()
    assert "forgetting: tickets@1 vs this model on the eval set" in summary
    assert "perplexity" in summary and "lost" in summary
    report = (cfg.out / "report.md").read_text()
    assert "## Forgetting" in report and "| perplexity |" in report


def test_without_an_eval_set_on_record_the_user_is_told_to_pass_one(tmp_path):
    cfg = EvalConfig(model="default", data=helpers.TICKETS_TEST, limit=1, out=tmp_path / "out",
                     forgetting=str(helpers.lora_run()), generation={"max_new_tokens": 2})
    with helpers.one_thread(), pytest.raises(ConfigError, match="--forgetting-data"):
        eval_run.run(cfg, say=lambda *_: None)
