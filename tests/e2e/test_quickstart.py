"""`tunesmith quickstart` end to end, as users run it: every stage on the embedded model and the
demo task, offline, including a real server asked through the openai SDK. The tuned model must
stop at its end-of-turn token, emit JSON and beat its base. It trains the demo's full 150 steps
(at 120 the 4M model's stop rate sits right at the bar, 0.90 to 0.99 depending on which
near-duplicates the data stage removed) and, to keep the suite short, evaluates 40 held-out
tickets instead of 120."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart") / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith", "quickstart", "--out", str(out), "--steps", "150", "--set", "eval_limit=40"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout, json.loads((out / "summary.json").read_text())


def test_every_stage_writes_its_directory_with_a_manifest(tour):
    out, _, _ = tour
    for stage in ("data", "train", "eval", "merged"):
        assert (out / stage / "manifest.json").is_file(), stage
    assert (out / "train" / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "eval" / "report.html").is_file() and (out / "eval" / "samples.jsonl").is_file()
    assert list((out / "export").glob("*.gguf")) and (out / "export" / "Modelfile").is_file()
    assert (out / "data" / "report.md").is_file() and (out / "train" / "loss.png").is_file()


def test_tuned_model_learns_to_stop_and_beats_its_base(tour):
    _, _, summary = tour
    base, tuned = summary["eval"]["base"], summary["eval"]["tuned"]
    assert tuned["stop_rate"] >= 0.95, tuned  # the model learned to emit its end-of-turn token
    assert tuned["json_valid"] > base["json_valid"] + 0.5
    assert tuned["category_accuracy"] > base["category_accuracy"] + 0.2
    assert tuned["perplexity"] < base["perplexity"] / 10


def test_export_is_verified_and_parity_holds(tour):
    _, _, summary = tour
    export, merge = summary["export"], summary["merge"]
    assert export["ok"] is True and export["verification"]["ok"] is True and export["parity"]["ok"] is True
    assert merge["max_abs_logit_diff"] <= 1e-4 and merge["top1_agreement"] == 1.0


def test_server_answered_through_the_openai_sdk(tour):
    out, stdout, summary = tour
    assert summary["answer"] and summary["answer"].strip()
    assert "tickets:" in stdout
    assert "base vs tuned on 40 held-out tickets" in stdout
    assert f"--adapter tickets={out / 'train'}" in stdout
