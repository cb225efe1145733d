"""batch_size "auto" through the memory planner: the data's rule, lowered to the largest batch
the plan fits in the worker's memory; the job object shows the value it trains with."""

from __future__ import annotations

import pytest
import yaml
from jobs_helpers import TICKETS

from tunesmith.jobs import spec
from tunesmith.jobs.config import JobsWorkerConfig
from tunesmith.jobs.planning import largest_batch
from tunesmith.jobs.routes import job_object
from tunesmith.jobs.store import JobStore
from tunesmith.jobs.worker import Supervisor
from tunesmith.train.config import TrainConfig

SETTINGS = {"base_path": "default", "learning_rate": 1e-4, "max_seq_len": 1024, "lora_r": 16,
            "checkpoint_every": None, "keep_checkpoints": 3, "min_examples": 10}


def _config_for(resolved, data_dir):
    return lambda batch: spec.train_config(
        base_path="default", learning_rate=1e-4, resolved=spec.with_batch_size(resolved, batch), seed=1,
        data_dir=str(data_dir), output_dir=str(data_dir.parent / "out"), max_seq_len=1024, lora_r=16,
        checkpoint_every=None, keep_checkpoints=3)


def test_a_smaller_memory_fits_a_smaller_batch(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text(TICKETS.read_text())
    resolved = spec.resolve(spec.parse_method({}), 20_000)
    config_for = _config_for(resolved, tmp_path / "data")
    small, where = largest_batch(config_for, 32, "1GiB")
    large, _ = largest_batch(config_for, 32, "64GiB")
    assert 1 <= small < large == 32 and "1GiB" in where
    assert small & (small - 1) == 0  # a power of two
    assert largest_batch(config_for, 32, "1MiB")[0] == 1  # nothing fits: the smallest batch, training warns


@pytest.mark.parametrize("memory, batch", [("64GiB", 8), ("1GiB", 2)])
def test_the_job_object_shows_the_batch_size_the_plan_allows(tmp_path, memory, batch):
    cfg = JobsWorkerConfig(root=tmp_path / "store", memory=memory)
    store = JobStore(cfg.root)
    lines = TICKETS.read_text().splitlines()
    upload = store.write_file("default", "big.jsonl", ("\n".join((lines * 3)[:5000]) + "\n").encode(),
                              "fine-tune")
    store.add_job({"id": "ftjob-big", "project": "default", "organization_id": "o", "created_at": 0, "model": "base",
                   "training_file": upload["id"], "status": "validating_files", "seed": 1,
                   "run_dir": str(store.runs_dir / "ftjob-big"), "settings": SETTINGS,
                   "method": spec.parse_method({"hyperparameters": {"n_epochs": 1}})})
    Supervisor(store, cfg)._validate(store.job("ftjob-big"))  # validation only: nothing is launched
    job = store.job("ftjob-big")
    assert job["status"] == "queued", job["error"]
    assert job_object(job)["hyperparameters"]["batch_size"] == batch  # 0.2% of 5000 examples gives 8
    assert job["method"]["supervised"]["hyperparameters"]["batch_size"] == batch
    trained = TrainConfig.model_validate(yaml.safe_load((store.runs_dir / "ftjob-big" / "train.yaml").read_text()))
    assert trained.train.micro_batch_size == batch  # what `tunesmith train` is given
    notes = [e["message"] for e in store.events("ftjob-big", limit=50) if e["message"].startswith("batch_size auto")]
    assert bool(notes) == (batch < 8)
