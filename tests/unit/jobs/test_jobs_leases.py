"""Several workers on one store: a job is claimed by one worker only, its lease is renewed while
it trains, and a job whose worker is gone (killed, or silent past its lease) is taken back by
another worker and resumed from its checkpoint."""

from __future__ import annotations

import json
import sys
import threading
import time

import pytest
from jobs_helpers import pid_alive, wait_until
from test_jobs_worker import TRAINER

from tunesmith.jobs.config import JobsWorkerConfig
from tunesmith.jobs.store import JobStore
from tunesmith.jobs.worker import Supervisor


@pytest.fixture
def make_worker(tmp_path, monkeypatch):
    monkeypatch.setenv("STAND_IN_MODE", "sleep")
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    made = []

    def make(**extra):
        cfg = JobsWorkerConfig(root=tmp_path / "store", launcher=f"{sys.executable} {script} {{config}} --job {{job_id}}",
                               cancel_grace_seconds=1.0, poll_seconds=0.1, **extra)
        worker = Supervisor(JobStore(cfg.root), cfg)
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.stop()


def _queue(store, job_id):
    run = store.runs_dir / job_id
    run.mkdir(parents=True)
    (run / "train.yaml").write_text("{}")
    store.add_job({"id": job_id, "project": "default", "organization_id": "o", "created_at": 0, "model": "base",
                   "training_file": "file-1", "status": "queued", "seed": 1, "run_dir": str(run),
                   "method": {"type": "supervised", "supervised": {"hyperparameters": {}}}})
    return run


def _launches(run):
    path = run / "argv.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_a_claim_is_won_by_exactly_one_of_two_racing_workers(tmp_path):
    stores = [JobStore(tmp_path / "store"), JobStore(tmp_path / "store")]  # two connections, as two processes
    for i in range(40):
        _queue(stores[0], f"ftjob-{i}")
    wins = {0: [], 1: []}
    start = threading.Barrier(2)

    def race(who):
        start.wait()
        for i in range(40):
            if stores[who].claim(f"ftjob-{i}", f"host:1:{who}", time.time() + 60, from_status="queued",
                                 now=time.time(), status="running"):
                wins[who].append(i)

    threads = [threading.Thread(target=race, args=(who,)) for who in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins[0] + wins[1]) == list(range(40))  # every job once, none twice
    assert {j["worker"] for j in stores[0].jobs_in("running")} <= {"host:1:0", "host:1:1"}


def test_two_workers_run_two_jobs_once_each(make_worker):
    first, second = make_worker(), make_worker()
    runs = [_queue(first.store, "ftjob-a"), _queue(first.store, "ftjob-b")]
    wait_until(lambda: (first.tick(), second.tick(), len(first.running) + len(second.running) == 2)[-1],
               timeout=30, what="both jobs to start", interval=0.1)
    for _ in range(5):
        first.tick()
        second.tick()
    assert len(first.running) == len(second.running) == 1
    # A trainer records its launch once its interpreter is up, which a busy machine can delay.
    wait_until(lambda: all(_launches(run) for run in runs), timeout=30, what="both trainers to record their launch")
    assert [len(_launches(run)) for run in runs] == [1, 1]
    holders = {first.store.job(j)["worker"] for j in ("ftjob-a", "ftjob-b")}
    assert holders == {first.worker, second.worker}


def test_a_job_whose_lease_lapsed_is_resumed_by_another_worker(make_worker):
    first = make_worker(lease_seconds=1.0)
    run = _queue(first.store, "ftjob-a")
    wait_until(lambda: (first.tick(), (run / "train" / "metrics.jsonl").is_file())[-1], timeout=30,
               what="a checkpoint", interval=0.1)
    trainer = first.store.job("ftjob-a")["pid"]
    # The first worker stalls (no more ticks): no renewals, so its lease lapses after a second.
    second = make_worker(lease_seconds=1.0)
    second.tick()
    assert second.store.job("ftjob-a")["worker"] == first.worker  # still within its lease
    job = wait_until(lambda: (second.tick(), (lambda j: j if j["worker"] == second.worker else None)(
        second.store.job("ftjob-a")))[-1], timeout=30, what="the second worker to take the job", interval=0.2)
    assert job["status"] == "running"
    wait_until(lambda: len(_launches(run)) == 2, timeout=30, what="the second launch")
    assert _launches(run)[-1][-2:] == ["--resume", "latest"]
    assert "The job was interrupted (its worker stopped); it resumes from its last checkpoint." in \
        [e["message"] for e in second.store.events("ftjob-a", limit=100)]
    # The first worker wakes up, finds its claim gone and stops its own training process.
    first.tick()
    assert not first.running
    wait_until(lambda: not pid_alive(trainer), timeout=20, what="the first trainer to stop")
    assert pid_alive(second.store.job("ftjob-a")["pid"])


def test_a_dead_worker_on_this_host_is_replaced_without_waiting_for_its_lease(make_worker):
    first = make_worker(lease_seconds=3600.0)
    run = _queue(first.store, "ftjob-a")
    wait_until(lambda: (first.tick(), bool(_launches(run)))[-1], timeout=30, what="the job to start", interval=0.1)
    # As if the worker had been killed: its id names a process of this host that no longer exists.
    first.store.db.query("UPDATE jobs SET worker = ? WHERE id = ?", ("{}:999999999:dead".format(
        first.worker.split(":")[0]), "ftjob-a"))
    first.running.clear()
    second = make_worker(lease_seconds=3600.0)
    wait_until(lambda: (second.tick(), second.store.job("ftjob-a")["worker"] == second.worker)[-1], timeout=30,
               what="the second worker to take the job", interval=0.1)
    wait_until(lambda: len(_launches(run)) == 2, timeout=30, what="the second launch")


def test_a_lease_shorter_than_a_few_polls_is_refused():
    with pytest.raises(ValueError, match="lease_seconds"):
        JobsWorkerConfig(lease_seconds=1.0, poll_seconds=0.5)


def test_a_long_step_of_a_live_worker_does_not_let_its_lease_lapse(make_worker, monkeypatch):
    """The first export imports torch, a large file takes a while to validate: the loop may stall
    for longer than a lease, and the heartbeat thread keeps the claim alive meanwhile."""
    first = make_worker(lease_seconds=2.0)
    run = _queue(first.store, "ftjob-a")
    first.start()
    wait_until(lambda: _launches(run), timeout=30, what="the job to start")
    watch, stalled = first._watch, threading.Event()

    def stalling_watch(running):
        stalled.set()
        time.sleep(6)  # three leases
        return watch(running)

    monkeypatch.setattr(first, "_watch", stalling_watch)
    stalled.wait(10)
    second = make_worker(lease_seconds=2.0)
    for _ in range(50):  # five seconds of a second worker looking for lapsed leases
        second.tick()
        time.sleep(0.1)
    assert second.store.job("ftjob-a")["worker"] == first.worker and not second.running
    assert len(_launches(run)) == 1
