"""The supervisor with a stand-in trainer (a short script in place of `tunesmith train`): the
launcher template, progress into events and checkpoints, failures, cancel, and recovery."""

from __future__ import annotations

import json
import sys
import textwrap
from types import SimpleNamespace

import pytest
from jobs_helpers import pid_alive, wait_until

from tunesmith.jobs.config import JobsConfig
from tunesmith.jobs.service import JobsService
from tunesmith.models.loading import resolve_model_path
from tunesmith.serve.adapters import Target

# Writes what it was called with, two metrics records and a checkpoint, then behaves as MODE says.
TRAINER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    run = Path(sys.argv[1]).parent
    with open(run / "argv.jsonl", "a") as fh:
        fh.write(json.dumps(sys.argv[1:]) + "\\n")
    out = run / "train"
    (out / "checkpoints" / "step-0000001").mkdir(parents=True, exist_ok=True)
    (out / "checkpoints" / "step-0000001" / "complete.json").write_text("{}")
    print("training: 4 examples, 1 steps per epoch, 2 steps; padded", flush=True)
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 1, "loss": 2.5}) + "\\n")
        fh.write(json.dumps({"step": 1, "val_loss": 2.7}) + "\\n")
    mode = os.environ.get("STAND_IN_MODE", "fail")
    if mode == "sleep":
        time.sleep(120)
    print("the GPU caught fire", file=sys.stderr, flush=True)
    sys.exit(3)
""")


@pytest.fixture
def service(tmp_path, monkeypatch):
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    state = SimpleNamespace(served_model=resolve_model_path("default"), api_key=None,
                            base=Target("base", None, None, frozenset()),
                            cfg=SimpleNamespace(model=SimpleNamespace(path="default")),
                            registry=SimpleNamespace(get=lambda name: None))
    cfg = JobsConfig(root=tmp_path / "store", launcher=f"{sys.executable} {script} {{config}} --job {{job_id}}",
                     cancel_grace_seconds=1.0)
    service = JobsService(cfg, state)
    yield service
    service.supervisor.stop()


def _queued(service, job_id="ftjob-abc"):
    run = service.store.runs_dir / job_id
    run.mkdir(parents=True)
    (run / "train.yaml").write_text("{}")
    service.store.add_job({"id": job_id, "project": "default", "organization_id": "o", "created_at": 0,
                           "model": "base", "training_file": "file-1", "status": "queued", "seed": 1,
                           "method": {"type": "supervised", "supervised": {"hyperparameters": {}}},
                           "run_dir": str(run)})
    return run


def _settle(service, job_id, done, timeout=60):
    def check():
        service.supervisor.tick()
        return done(service.store.job(job_id))
    wait_until(check, timeout=timeout, what="the supervisor", interval=0.1)
    return service.store.job(job_id)


def test_a_failing_trainer_fails_the_job_with_its_last_words(service):
    run = _queued(service)
    job = _settle(service, "ftjob-abc", lambda j: j["status"] == "failed")
    assert job["error"]["code"] == "training_failed" and "the GPU caught fire" in job["error"]["message"]
    assert json.loads((run / "argv.jsonl").read_text().splitlines()[0]) == [str(run / "train.yaml"), "--job", "ftjob-abc"]
    messages = [e["message"] for e in service.store.events("ftjob-abc", limit=100)]
    assert "Step 1/2: training loss=2.5000" in messages and "Step 1: validation loss=2.7000" in messages
    assert "Checkpoint created at step 1" in messages
    (checkpoint,) = service.store.checkpoints("ftjob-abc")
    assert checkpoint["metrics"]["train_loss"] == 2.5 and checkpoint["metrics"]["valid_loss"] == 2.7


def test_cancel_stops_the_trainer_and_a_restart_resumes_from_the_checkpoint(service, monkeypatch):
    monkeypatch.setenv("STAND_IN_MODE", "sleep")
    run = _queued(service)
    job = _settle(service, "ftjob-abc", lambda j: j["pid"] and (run / "train" / "metrics.jsonl").is_file())
    pid = job["pid"]
    service.store.update_job("ftjob-abc", status="cancelled", stop_request="cancel")
    job = _settle(service, "ftjob-abc", lambda j: j["stop_request"] is None)
    assert job["status"] == "cancelled" and not pid_alive(pid)

    # A job the store says is running when the supervisor starts was interrupted: queued again,
    # and launched with --resume latest since a checkpoint exists.
    service.store.update_job("ftjob-abc", status="running", pid=None)
    service.supervisor._recover()
    assert service.store.job("ftjob-abc")["status"] == "queued"
    job = _settle(service, "ftjob-abc", lambda j: j["pid"] and len((run / "argv.jsonl").read_text().splitlines()) == 2)
    assert json.loads((run / "argv.jsonl").read_text().splitlines()[1])[-2:] == ["--resume", "latest"]
