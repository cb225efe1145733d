"""The jobs database: pagination order, guarded state changes, transactions, durability."""

from __future__ import annotations

import pytest

from tunesmith.jobs.store import JobStore


def _job(store, job_id, project="p", status="queued", **extra):
    store.add_job({"id": job_id, "project": project, "organization_id": "o", "created_at": 0, "model": "m",
                   "training_file": "file-1", "status": status, "method": {"type": "supervised"}, "seed": 1,
                   "run_dir": str(store.runs_dir / job_id), **extra})


def test_jobs_page_newest_first_within_a_project(tmp_path):
    store = JobStore(tmp_path)
    for i in range(5):
        _job(store, f"ftjob-{i}")
    _job(store, "ftjob-other", project="q")
    assert [j["id"] for j in store.jobs("p", limit=2)] == ["ftjob-4", "ftjob-3"]
    assert [j["id"] for j in store.jobs("p", after="ftjob-3", limit=10)] == ["ftjob-2", "ftjob-1", "ftjob-0"]
    assert store.jobs("p", after="ftjob-other") == []  # another project's id is no cursor
    assert store.job("ftjob-other", "p") is None and store.job("ftjob-other", "q")["project"] == "q"


def test_guarded_update_does_not_overwrite_a_state_that_moved_on(tmp_path):
    store = JobStore(tmp_path)
    _job(store, "ftjob-a", status="cancelled")
    assert not store.update_job("ftjob-a", only_if_status=("running",), status="succeeded")
    assert store.job("ftjob-a")["status"] == "cancelled"
    assert store.update_job("ftjob-a", error={"code": "x", "message": "m", "param": None})
    assert store.job("ftjob-a")["error"]["code"] == "x"


def test_a_failed_transaction_leaves_nothing_behind(tmp_path):
    store = JobStore(tmp_path)
    with pytest.raises(RuntimeError):
        with store.db.transaction():
            _job(store, "ftjob-a")  # joins the outer transaction
            raise RuntimeError("boom")
    assert store.job("ftjob-a") is None


def test_state_survives_reopening_and_uses_wal(tmp_path):
    store = JobStore(tmp_path)
    _job(store, "ftjob-a")
    store.add_event("ftjob-a", "one")
    store.add_event("ftjob-a", "two", type="metrics", data={"step": 1})
    assert store.add_checkpoint("ftjob-a", 2, "ft:x:ckpt-step-2", {"step": 2})
    assert not store.add_checkpoint("ftjob-a", 2, "ft:x:ckpt-step-2", {"step": 2})  # once per step
    store.db.close()
    again = JobStore(tmp_path)
    assert again.db.one("PRAGMA journal_mode")[0] == "wal"
    assert [e["message"] for e in again.events("ftjob-a")] == ["two", "one"]
    assert again.events("ftjob-a")[0]["data"] == {"step": 1}
    assert [c["step"] for c in again.checkpoints("ftjob-a")] == [2]
