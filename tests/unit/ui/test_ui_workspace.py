"""The UI's view of a workspace: discovery, confinement, metrics read while a run writes them."""

from __future__ import annotations

import json
import os
import time

import pytest

from tunesmith.ui.workspace import Workspace, WorkspaceError, classify, detail, manifest_chain, read_metrics_chunk


def _train_run(path, records, *, final=True):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text("method: lora\n")
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    manifest = {"stage": "train", "inputs": {"data": []}}
    if final:
        manifest.update(steps=records[-1]["step"], method="lora", base_model={"path": "default"})
        (path / "adapter").mkdir()
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


@pytest.fixture
def ws(tmp_path):
    return Workspace.open(tmp_path)


def test_paths_that_leave_the_workspace_are_refused(ws, tmp_path):
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "secret.json").write_text("{}")
    os.symlink(outside, tmp_path / "link")
    for bad in ("../x", "a/../../x", str(outside / "secret.json"), "link/secret.json", "\x00"):
        with pytest.raises(WorkspaceError) as info:
            ws.resolve(bad)
        assert info.value.status in (400, 403)
    assert ws.resolve("runs/sft") == tmp_path / "runs" / "sft"


def test_only_report_files_are_readable(ws, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "adapter_model.safetensors").write_bytes(b"weights")
    (tmp_path / "run" / "metrics.json").write_text('{"a": 1}')
    with pytest.raises(WorkspaceError) as info:
        ws.read_file("run/adapter_model.safetensors")
    assert info.value.status == 403
    assert ws.read_file("run/metrics.json") == (b'{"a": 1}', "application/json")


def test_discovery_classifies_stage_directories(ws, tmp_path):
    _train_run(tmp_path / "runs" / "done", [{"step": 1, "loss": 2.0, "lr": 1e-3}])
    running = _train_run(tmp_path / "runs" / "live", [{"step": 1, "loss": 2.0, "lr": 1e-3}], final=False)
    stale = _train_run(tmp_path / "runs" / "stale", [{"step": 1, "loss": 2.0, "lr": 1e-3}], final=False)
    old = time.time() - 3600
    for f in stale.iterdir():
        os.utime(f, (old, old))
    _train_run(tmp_path / "runs" / "nan", [{"step": 1, "loss": 2.0, "lr": 1e-3}, {"step": 2, "nonfinite": "loss"}])
    (tmp_path / "evals" / "e").mkdir(parents=True)
    (tmp_path / "evals" / "e" / "metrics.json").write_text(json.dumps({"model": "m", "examples": 3, "tuned": {}}))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text(json.dumps({"stage": "data prepare", "counts": {"kept": 5, "read": 6}}))
    (tmp_path / ".hidden" / "r").mkdir(parents=True)
    (tmp_path / ".hidden" / "r" / "metrics.json").write_text("{}")
    (tmp_path / "runs" / "done" / "checkpoints" / "step-1").mkdir(parents=True)
    (tmp_path / "runs" / "done" / "checkpoints" / "step-1" / "manifest.json").write_text('{"stage": "train"}')
    status = {r["id"]: (r["kind"], r["status"]) for r in ws.list_runs()}
    assert status == {"runs/done": ("train", "finished"), "runs/live": ("train", "running"),
                      "runs/stale": ("train", "incomplete"), "runs/nan": ("train", "diverged"),
                      "evals/e": ("eval", "incomplete"), "data": ("data", "finished")}
    assert classify(running) == "train"


def test_metrics_are_read_incrementally_up_to_the_last_complete_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "lo')
    first = read_metrics_chunk(path, 0)
    assert [r["step"] for r in first["records"]] == [1]
    with open(path, "a") as fh:
        fh.write('ss": 2.5}\n{"step": 3, "loss": 2.0}\n')
    second = read_metrics_chunk(path, first["offset"])
    assert [r["step"] for r in second["records"]] == [2, 3] and not second["reset"]
    assert read_metrics_chunk(path, second["offset"])["records"] == []
    path.write_text('{"step": 1, "loss": 9.0}\n')  # a restarted run truncates the file
    again = read_metrics_chunk(path, second["offset"])
    assert again["reset"] and [r["loss"] for r in again["records"]] == [9.0]


def test_manifest_chain_follows_recorded_inputs(ws, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("{}\n")
    (data / "manifest.json").write_text(json.dumps({"stage": "data prepare", "inputs": [{"path": "raw.jsonl"}]}))
    run = _train_run(tmp_path / "runs" / "sft", [{"step": 1, "loss": 1.0}])
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["inputs"] = {"data": [{"path": str(data / "train.jsonl"), "sha256": "x"}]}
    (run / "manifest.json").write_text(json.dumps(manifest))
    ev = tmp_path / "evals" / "sft"
    ev.mkdir(parents=True)
    (ev / "metrics.json").write_text("{}")
    (ev / "manifest.json").write_text(json.dumps({"stage": "eval", "inputs": {"adapter": [
        {"path": "runs/sft/adapter/adapter_model.safetensors"}], "data": [{"path": "/etc/passwd"}]}}))
    chain = manifest_chain(ws, ev)
    assert [(n["id"], n["inputs"]) for n in chain] == [("evals/sft", ["runs/sft"]), ("runs/sft", ["data"]), ("data", [])]
    assert detail(ws, ev)["chain"] == chain
