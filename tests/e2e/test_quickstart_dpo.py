"""`tunesmith quickstart --dpo` on the embedded model at a tiny budget: DPO continues the SFT run
(whose adapter, frozen, is the reference), is evaluated on the same held-out tickets with the
same settings, and base / SFT / SFT + DPO are printed side by side. The budget is far too small
for the figures to mean anything; what is checked is the wiring a user relies on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

EVAL_LIMIT = 3


@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart-dpo") / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith", "quickstart", "--out", str(out), "--steps", "4", "--dpo", "--no-serve",
         "--set", "dpo_steps=2", "--set", f"eval_limit={EVAL_LIMIT}"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout, json.loads((out / "summary.json").read_text())


def test_dpo_continues_the_sft_adapter_which_is_its_reference(tour):
    out, _, summary = tour
    config = yaml.safe_load((out / "dpo" / "config.yaml").read_text())
    assert config["objective"] == "dpo" and config["method"] == "lora"
    assert str(config["init_from"]) == str(out / "train")
    # From an SFT run the reference is the starting model, computed once before the first step.
    assert (out / "dpo" / "reference_logps.safetensors").is_file()
    assert summary["dpo"]["steps"] == 2
    pairs = (out / "dpo-data" / "pairs.jsonl").read_text().splitlines()
    assert len(pairs) == summary["dpo"]["pairs"] and {"prompt", "chosen", "rejected"} <= set(json.loads(pairs[0]))
    sft = load_file(str(out / "train" / "adapter" / "adapter_model.safetensors"))
    dpo = load_file(str(out / "dpo" / "adapter" / "adapter_model.safetensors"))
    assert sft.keys() == dpo.keys()
    assert any(not (sft[k] == dpo[k]).all() for k in sft)  # DPO moved the SFT adapter


def test_three_models_on_the_same_tickets(tour):
    out, stdout, summary = tour
    sft_eval = json.loads((out / "eval" / "metrics.json").read_text())
    dpo_eval = json.loads((out / "eval-dpo" / "metrics.json").read_text())
    assert sft_eval["examples"] == dpo_eval["examples"] == EVAL_LIMIT
    assert sft_eval["generation"] == dpo_eval["generation"]
    table = summary["dpo"]["metrics"]
    for name in ("category_accuracy", "priority_accuracy", "json_valid", "stop_rate"):
        assert table[name] == {"base": sft_eval["base"][name], "sft": sft_eval["tuned"][name],
                               "dpo": dpo_eval["tuned"][name]}
    assert json.loads((out / "eval-dpo" / "three_way.json").read_text())["metrics"] == table
    assert "| metric | base | SFT | SFT + DPO |" in stdout
    assert f"| stop_rate | {table['stop_rate']['base']:.2f} | {table['stop_rate']['sft']:.2f} | " \
           f"{table['stop_rate']['dpo']:.2f} |" in stdout
    assert "== 6/6 summary ==" in stdout  # data, train, eval, dpo, export, summary (no serve)
