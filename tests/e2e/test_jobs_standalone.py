"""Jobs run by `tunesmith jobs worker` processes while the server (`jobs.run_worker: false`) only
serves the API and the models, driven by the official `openai` SDK: a job created through the API
is trained by a separate worker, two workers never run the same job, a checkpoint answers chat
while its job is still running, and a worker killed with SIGKILL mid-job has its job resumed by
another worker from the checkpoint, ending with the weights of an uninterrupted run.

Jobs that must be caught mid-run train through a launcher that holds after each checkpoint until
the test writes `release` into the job's run directory, so "still running" never depends on timing."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from jobs_helpers import (BASE_ALIAS, events, jobs_settings, pid_alive, ticket_lines, wait_finished, wait_until,
                          stop_gracefully, write_lines)
from safetensors.torch import load_file
from serve_helpers import LiveServer

from tunesmith.serve.config import ServeConfig
from tuned_helpers import one_thread

pytestmark = pytest.mark.slow
KEY = "worker-key"
TINY = {"n_epochs": 2, "batch_size": 5}  # 10 examples: 4 steps, a checkpoint at steps 2 and 4
QUESTION = [{"role": "user", "content": "Subject: refund\n\nI was charged twice for order 123."}]

HOLDING_TRAINER = textwrap.dedent("""
    import sys, time
    from pathlib import Path

    import tunesmith.train.run as run_module

    save_checkpoint = run_module.save_checkpoint

    def save_then_hold(root, *args, **kwargs):
        path = save_checkpoint(root, *args, **kwargs)
        release = Path(root).parents[1] / "release"  # root is RUN_DIR/train/checkpoints
        while not release.exists():
            time.sleep(0.1)
        return path

    run_module.save_checkpoint = save_then_hold
    from tunesmith.cli import main

    main(["train", *sys.argv[1:]])
""")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("jobs-worker")


@pytest.fixture(scope="module")
def server(root):
    jobs = jobs_settings(root / "store", run_worker=False)
    cfg = ServeConfig(api_key=KEY, log_level="warning", default_max_tokens=12, jobs=jobs)
    with one_thread(), LiveServer(cfg) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def train_file(client, root):
    return client.files.create(file=write_lines(root / "train.jsonl", ticket_lines(10)).open("rb"), purpose="fine-tune")


class Worker:
    """`python -m tunesmith jobs worker --store STORE` in a process of its own."""

    def __init__(self, root, *, holding: bool = False):
        args = [sys.executable, "-m", "tunesmith", "jobs", "worker", "--store", str(root / "store"),
                "--set", "poll_seconds=0.2", "--set", "lease_seconds=10"]
        if holding:
            script = root / "holding_trainer.py"
            script.write_text(HOLDING_TRAINER)
            args += ["--set", f"launcher={sys.executable} {script} {{config}}"]
        self.log = open(root / "workers.log", "ab")
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        stop_gracefully(self.process)
        self.log.close()


def _release(root, job_id):
    (root / "store" / "runs" / job_id / "release").write_text("")


def _ask(client, model):
    return client.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=12)


def _adapter(root, job_id):
    return load_file(str(root / "store" / "runs" / job_id / "train" / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def worker_job(client, server, train_file, root):
    """A job created through the API, with two worker processes on the store."""
    job = client.fine_tuning.jobs.create(training_file=train_file.id, model=BASE_ALIAS, hyperparameters=TINY,
                                         suffix="tickets", seed=7)
    assert server.state.jobs.supervisor is None  # the server itself runs no jobs
    workers = [Worker(root), Worker(root)]
    try:
        return wait_finished(client, job.id)
    finally:  # later tests start the workers they need
        for worker in workers:
            worker.stop()


def test_a_separate_worker_runs_a_job_created_through_the_api(client, worker_job):
    job = worker_job
    assert job.status == "succeeded", job.error
    assert _ask(client, job.fine_tuned_model).model == job.fine_tuned_model
    assert job.fine_tuned_model in [m.id for m in client.models.list()]
    messages = [e.message for e in events(client, job.id)]
    # Two workers shared the store: the job started once and was never taken over.
    assert messages.count("Fine-tuning job started") == 1
    assert not any("interrupted" in m or "resumed" in m for m in messages)


def test_events_and_results_carry_token_accuracy(client, worker_job):
    metrics = [e.data for e in events(client, worker_job.id) if e.type == "metrics"]
    accuracies = [m["train_mean_token_accuracy"] for m in metrics]
    assert len(accuracies) == 4 and all(isinstance(a, float) and 0.0 <= a <= 1.0 for a in accuracies)
    checkpoint = client.fine_tuning.jobs.checkpoints.list(worker_job.id).data[0]
    assert checkpoint.metrics.train_mean_token_accuracy is not None
    (result,) = worker_job.result_files
    rows = client.files.content(result).text.splitlines()[1:]
    assert len(rows) == 4 and all(row.split(",")[2] for row in rows)  # train_accuracy filled on every step


def test_a_checkpoint_answers_chat_while_its_job_runs(client, train_file, root):
    worker = Worker(root, holding=True)
    try:
        job = client.fine_tuning.jobs.create(training_file=train_file.id, model=BASE_ALIAS, hyperparameters=TINY)
        (checkpoint,) = wait_until(lambda: client.fine_tuning.jobs.checkpoints.list(job.id).data, timeout=240,
                                   what="the first checkpoint")
        assert client.fine_tuning.jobs.retrieve(job.id).status == "running"  # held after its checkpoint
        name = checkpoint.fine_tuned_model_checkpoint
        assert name.endswith(":ckpt-step-2")
        answer = _ask(client, name)
        assert answer.model == name and answer.choices[0].message.content
        assert name in [m.id for m in client.models.list()]
        _release(root, job.id)
        job = wait_finished(client, job.id)
        assert job.status == "succeeded", job.error
        assert _ask(client, name).model == name  # still served once the job is done
    finally:
        worker.stop()


def test_a_killed_worker_has_its_job_resumed_by_another(client, train_file, root, worker_job):
    first = Worker(root, holding=True)
    second = None
    try:
        job = client.fine_tuning.jobs.create(training_file=train_file.id, model=BASE_ALIAS, hyperparameters=TINY,
                                             suffix="tickets", seed=7)
        wait_until(lambda: client.fine_tuning.jobs.checkpoints.list(job.id).data, timeout=240,
                   what="the first checkpoint")
        trainer = wait_until(lambda: server_job(root, job.id)["pid"], timeout=30, what="the training process")
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()
        wait_until(lambda: not pid_alive(trainer), timeout=20, what="the training process to die with its worker")
        _release(root, job.id)
        second = Worker(root)
        job = wait_finished(client, job.id)
        assert job.status == "succeeded", job.error
        messages = [e.message for e in events(client, job.id)]
        assert any("interrupted" in m for m in messages)
        assert "Fine-tuning job resumed from its last checkpoint" in messages
        assert sorted(e.data["step"] for e in events(client, job.id) if e.type == "metrics") == [1, 2, 3, 4]
    finally:
        first.stop()
        if second is not None:
            second.stop()
    # Same data, hyperparameters and seed as `worker_job`, which ran without interruption.
    interrupted, straight = _adapter(root, job.id), _adapter(root, worker_job.id)
    assert interrupted.keys() == straight.keys()
    for name in straight:
        torch.testing.assert_close(interrupted[name], straight[name], rtol=0, atol=1e-6, msg=name)


def server_job(root, job_id):
    import sqlite3

    with sqlite3.connect(root / "store" / "jobs.sqlite3") as db:
        db.row_factory = sqlite3.Row
        return dict(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())
