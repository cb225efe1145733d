"""`tunesmith eval` end to end on a tiny LoRA run of the default model, base versus tuned."""

import json

import pytest

from tunesmith.errors import ConfigError, DataError
from tunesmith.eval import run as eval_run
from tunesmith.eval.config import EvalConfig
from tunesmith.eval.generate import read_examples

import tuned_helpers as helpers


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = helpers.write_jsonl(root / "test.jsonl", helpers.ticket_examples(6))
    regression = helpers.write_jsonl(root / "regression.jsonl", helpers.ticket_examples(2))
    cfg = EvalConfig(model=str(helpers.lora_run()), data=data, out=root / "out", compare_base=True,
                     json_fields=["category", "priority"], regression=regression,
                     generation={"max_new_tokens": 20, "batch_size": 4})
    with helpers.one_thread():
        result = eval_run.run(cfg, say=lambda *_: None).metrics
    return cfg, result


def test_every_metric_is_reported_for_base_and_tuned_with_its_delta(evaluated):
    cfg, result = evaluated
    metrics = json.loads((cfg.out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result))
    expected = {"perplexity", "exact_match", "category_accuracy", "category_macro_f1", "priority_accuracy",
                "priority_macro_f1", "field_accuracy", "json_valid", "bleu", "chrf", "rouge_l", "stop_rate",
                "output_tokens_mean", "output_tokens_median"}
    assert expected <= set(metrics["tuned"]) and set(metrics["tuned"]) == set(metrics["base"])
    for name, delta in metrics["delta"].items():
        assert delta == pytest.approx(metrics["tuned"][name] - metrics["base"][name])
    assert metrics["examples"] == 6 and metrics["task"]["primary"] == "field_accuracy"


def test_training_lowered_the_assistant_token_perplexity(evaluated):
    _, result = evaluated
    # The adapter was trained on the first four of these tickets.
    assert result["tuned"]["perplexity"] < 0.8 * result["base"]["perplexity"]


def test_samples_hold_both_outputs_and_scores_and_wins_add_up(evaluated):
    cfg, result = evaluated
    samples = [json.loads(line) for line in (cfg.out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6
    for sample, example in zip(samples, read_examples(cfg.data)):
        assert sample["prompt"] == example.prompt and sample["reference"] == example.reference
        assert {"tuned_output", "base_output", "winner", "scores"} <= set(sample)
        assert set(sample["scores"]) == {"base", "tuned"}
        assert sample["scores"]["tuned"]["num_tokens"] <= cfg.generation.max_new_tokens
    wins = result["win_rate"]
    assert wins["tuned_wins"] + wins["base_wins"] + wins["ties"] == 6
    assert wins["tuned_wins"] == sum(s["winner"] == "tuned" for s in samples)


def test_regression_prompts_are_rescored(evaluated):
    _, result = evaluated
    regression = result["regression"]
    assert regression["prompts"] == 2 and regression["metric"] == "field_accuracy"
    assert regression["tuned_failed"] == len(regression["failures"])
    assert all(f["tuned_score"] < regression["min_score"] for f in regression["failures"])


def test_report_files_and_stage_record(evaluated):
    cfg, _ = evaluated
    out = cfg.out
    for name in ("metrics.png", "lengths.png", "wins.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "| metric | base | tuned | delta |" in md and "![metrics](metrics.png)" in md
    assert '<img src="metrics.png"' in (out / "report.html").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "eval" and (out / "config.yaml").is_file()
    assert {o["path"] for o in manifest["outputs"]} >= {"metrics.json", "samples.jsonl", "report.md", "report.html"}


def test_bad_inputs_are_user_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "no answer"}]}\n')
    with pytest.raises(DataError, match="no assistant answer"):
        read_examples(bad)
    with pytest.raises(ConfigError, match="needs --compare-base"):
        eval_run.run(EvalConfig(model=str(helpers.lora_run()), data=helpers.TICKETS_TEST, out=tmp_path,
                                judge={"url": "http://127.0.0.1:9/v1", "model": "j"}))
    from tunesmith.eval.harness import lm_eval_available, run_lm_eval

    if not lm_eval_available():
        with pytest.raises(ConfigError, match="pip install lm-eval"):
            run_lm_eval(None, None, ["hellaswag"], limit=1, batch_size=1)
