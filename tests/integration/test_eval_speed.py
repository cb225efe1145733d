"""`tunesmith eval` reports how fast each model generated (examples/s, tokens/s)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import tuned_helpers as helpers

from tunesmith.eval.config import EvalConfig  # noqa: E402
from tunesmith.eval import run as eval_run  # noqa: E402


def test_generation_speed_is_reported_for_base_and_tuned(tmp_path):
    data = helpers.write_jsonl(tmp_path / "test.jsonl", helpers.ticket_examples(3))
    said = []
    cfg = EvalConfig(model=str(helpers.lora_run()), data=data, out=tmp_path / "out", compare_base=True,
                     generation={"max_new_tokens": 8, "batch_size": 2})
    with helpers.one_thread():
        result = eval_run.run(cfg, say=said.append).metrics
    speed = result["generation_speed"]
    assert set(speed) == {"tuned", "base"}
    for figures in speed.values():
        assert figures["seconds"] > 0
        assert figures["examples_per_s"] * figures["seconds"] == pytest.approx(3, rel=0.2)  # 3 examples
        assert figures["generated_tokens_per_s"] > 0
    assert any(line.startswith("generation: tuned") and "examples/s" in line for line in said)
