"""`tunesmith eval --preference`: held-out preference accuracy and margin, base vs tuned."""

from __future__ import annotations

import json

import pytest
import torch

from tunesmith.config import load_config
from tunesmith.eval.config import EvalConfig
from tunesmith.train.config import TrainConfig
from tunesmith.errors import DataError
from tunesmith.eval import preference
from tunesmith.eval import run as eval_run
from tunesmith.train import sft


def test_figures_are_the_log_probability_and_implicit_reward_margins():
    tuned = torch.tensor([[-10.0, -12.0], [-8.0, -7.0], [-5.0, -9.0]], dtype=torch.float64)
    base = torch.tensor([[-11.0, -11.0], [-8.0, -6.0], [-6.0, -6.0]], dtype=torch.float64)
    figures = preference.summarise(tuned, base)
    assert figures["preference_accuracy"] == pytest.approx(2 / 3)
    assert figures["preference_margin"] == pytest.approx((2 - 1 + 4) / 3)
    # r = tuned - base: chosen/rejected rewards (1, -1), (0, -1), (1, -3): all three prefer chosen
    assert figures["reward_accuracy"] == 1.0
    assert figures["reward_margin"] == pytest.approx((2 + 1 + 4) / 3)


def test_eval_reports_preference_figures_for_base_and_tuned(tiny_model, pairs_dir, tmp_path):
    run_dir = tmp_path / "dpo"
    cfg = load_config(TrainConfig, None, [f"model={tiny_model}", f"data={pairs_dir}", f"output_dir={run_dir}",
                                          "objective=dpo", "train.max_steps=3", "train.micro_batch_size=4",
                                          "train.max_seq_len=320", "train.learning_rate=1e-2", "lora.r=4",
                                          "lora.dropout=0"])
    sft.run(cfg)
    test = tmp_path / "test.jsonl"
    rows = [json.loads(line) for line in (pairs_dir / "val.jsonl").read_text().splitlines()]
    test.write_text("".join(json.dumps({"messages": r["prompt"] + r["chosen"]}) + "\n" for r in rows))
    result = eval_run.run(EvalConfig(model=str(run_dir), data=test, out=tmp_path / "eval", compare_base=True,
                                     preference=pairs_dir / "val.jsonl", perplexity=False,
                                     generation={"max_new_tokens": 4}), say=lambda _: None).metrics
    for side in ("base", "tuned"):
        assert 0.0 <= result[side]["preference_accuracy"] <= 1.0
    # the tuned model's implicit reward against the base is what DPO optimised: the training
    # run's own validation figures (same pairs, same reference) say the same
    val = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "val_loss" in line][-1]
    assert result["tuned"]["reward_accuracy"] == pytest.approx(val["val_rewards/accuracies"])
    assert result["tuned"]["reward_margin"] * 0.1 == pytest.approx(val["val_rewards/margins"], abs=1e-4)
    assert result["base"]["reward_accuracy"] == 0.0 and result["base"]["reward_margin"] == 0.0
    assert "preference_accuracy" in result["delta"]


def test_a_file_without_pairs_is_refused(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    with pytest.raises(DataError, match="does not hold preference pairs"):
        preference.read_pairs(path)
