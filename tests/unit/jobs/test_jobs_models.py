"""The server serves what the store says: succeeded jobs' models and written checkpoints (of
running jobs too) are loaded into the engine, whoever trained them; a request for one the sync
has not loaded yet loads it on the spot; checkpoints removed from the store are unloaded."""

from __future__ import annotations

import concurrent.futures
from types import SimpleNamespace

import pytest

from tunesmith.jobs.config import JobsConfig
from tunesmith.jobs.service import JobsService
from tunesmith.models.loading import resolve_model_path
from tunesmith.serve.adapters import Target
from tunesmith.serve.protocol import APIError

MODEL = "ft:gpt-4o-mini:tunesmith::abc"


class Engine:
    def call(self, fn):
        future = concurrent.futures.Future()
        future.set_result(fn())
        return future


class Adapters:
    def __init__(self):
        self.known = {}

    def get(self, name):
        return self.known.get(name)

    def add(self, prepared):
        self.known[prepared.name] = prepared

    def remove(self, name):
        del self.known[name]


@pytest.fixture
def service(tmp_path):
    adapters = Adapters()
    loaded_from = {}

    def prepare(name, path):
        loaded_from[name] = path
        return SimpleNamespace(name=name, target=Target(name, name, None, frozenset()))

    state = SimpleNamespace(served_model=resolve_model_path("default"), api_key="k", engine=Engine(),
                            base=Target("base", None, None, frozenset()), registry=adapters, prepare=prepare,
                            cfg=SimpleNamespace(model=SimpleNamespace(path="default")))
    service = JobsService(JobsConfig(root=tmp_path / "store", run_worker=False), state)
    service.loaded_from = loaded_from
    return service


def _job(service, status, project="default"):
    run = service.store.runs_dir / "ftjob-abc"
    service.store.add_job({"id": "ftjob-abc", "project": project, "organization_id": "o", "created_at": 0,
                           "model": "base", "training_file": "f", "status": status, "seed": 1, "run_dir": str(run),
                           "method": {"type": "supervised", "supervised": {"hyperparameters": {}}},
                           "fine_tuned_model": MODEL if status == "succeeded" else None})
    return run


def test_a_running_jobs_checkpoint_is_served_and_a_removed_one_unloaded(service):
    run = _job(service, "running")
    service.store.add_checkpoint("ftjob-abc", 2, f"{MODEL}:ckpt-step-2", {}, str(run / "checkpoints" / "step-2"))
    service.store.add_checkpoint("ftjob-abc", 3, f"{MODEL}:ckpt-step-3", {}, None)  # not written as an adapter
    service.sync_models()
    assert service.models_of("default") == [f"{MODEL}:ckpt-step-2"]
    assert service.resolve_model(f"{MODEL}:ckpt-step-2", "default").adapter == "ft-ftjob-abc-2"
    assert service.loaded_from["ft-ftjob-abc-2"] == run / "checkpoints" / "step-2"
    service.store.delete_checkpoint("ftjob-abc", 2)  # rotated away when the job finished
    service.sync_models()
    assert service.models_of("default") == [] and service.state.registry.get("ft-ftjob-abc-2") is None
    assert service.resolve_model(f"{MODEL}:ckpt-step-2", "default") is None  # unknown: the server's 404 follows


def test_a_request_loads_a_model_the_sync_has_not_loaded_yet(service):
    run = _job(service, "succeeded")
    target = service.resolve_model(MODEL, "default")  # no sync ran
    assert target.name == MODEL and target.adapter == "ft-ftjob-abc"
    assert service.loaded_from["ft-ftjob-abc"] == run / "train" / "adapter"


def test_another_projects_model_is_neither_loaded_on_request_nor_answered(service):
    _job(service, "succeeded", project="acme")
    assert service.resolve_model(MODEL, "default") is None  # unknown here: the server's 404 follows
    assert service.state.registry.get("ft-ftjob-abc") is None
    service.sync_models()
    with pytest.raises(APIError):
        service.resolve_model(MODEL, "default")
    assert service.resolve_model(MODEL, "acme").name == MODEL
