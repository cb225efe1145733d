"""A server killed with SIGKILL in the middle of a fine-tuning job: its training process goes with
it, and the server started again on the same store resumes the job from its last checkpoint; the
job succeeds with the same weights as the same job run without interruption."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys

import httpx
import openai
import pytest
import torch
import yaml
from jobs_helpers import BASE_ALIAS, events, jobs_settings, pid_alive, ticket_lines, wait_finished, wait_until, write_lines
from safetensors.torch import load_file
from serve_helpers import free_port

pytestmark = pytest.mark.slow
KEY = "restart-key"
HYPER = {"n_epochs": 3, "batch_size": 5}  # 6 steps, checkpoints after steps 2, 4 and 6


class ServerProcess:
    def __init__(self, config, log):
        self.port = free_port()
        self.process = subprocess.Popen([sys.executable, "-m", "tunesmith", "serve", "--config", str(config),
                                         "--port", str(self.port)], stdout=log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self):
        def ready():
            assert self.process.poll() is None, "the server exited"
            try:
                return httpx.get(self.url + "/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        wait_until(ready, timeout=120, what="the server to start")
        return openai.OpenAI(base_url=self.url + "/v1", api_key=KEY, max_retries=0, timeout=60)

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _adapter(root, job_id):
    return load_file(str(root / "runs" / job_id / "train" / "adapter" / "adapter_model.safetensors"))


def test_sigkill_mid_job_resumes_from_the_checkpoint_and_matches_an_uninterrupted_run(tmp_path):
    store = tmp_path / "store"
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({"api_key": KEY, "log_level": "warning", "jobs": jobs_settings(store)}))
    data = write_lines(tmp_path / "train.jsonl", ticket_lines(10))
    log = open(tmp_path / "server.log", "ab")

    first = ServerProcess(config, log)
    try:
        client = first.wait_ready()
        upload = client.files.create(file=data.open("rb"), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(training_file=upload.id, model=BASE_ALIAS, hyperparameters=HYPER, seed=3)
        wait_until(lambda: client.fine_tuning.jobs.checkpoints.list(job.id).data, timeout=240, what="a checkpoint")
        with sqlite3.connect(store / "jobs.sqlite3") as db:
            trainer = db.execute("SELECT pid FROM jobs WHERE id = ?", (job.id,)).fetchone()[0]
        assert pid_alive(trainer)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()
        wait_until(lambda: not pid_alive(trainer), timeout=20, what="the training process to die with the server")
    finally:
        first.stop()

    second = ServerProcess(config, log)
    try:
        client = second.wait_ready()
        resumed = wait_finished(client, job.id)
        assert resumed.status == "succeeded", resumed.error
        messages = [e.message for e in events(client, job.id)]
        assert any("interrupted" in m for m in messages)
        assert "Fine-tuning job resumed from its last checkpoint" in messages
        steps = sorted(e.data["step"] for e in events(client, job.id) if e.type == "metrics")
        assert steps == [1, 2, 3, 4, 5, 6]
        assert client.chat.completions.create(model=resumed.fine_tuned_model, max_tokens=4,
                                              messages=[{"role": "user", "content": "hi"}]).model == resumed.fine_tuned_model
        # The same job once more, uninterrupted: resuming must not change the result.
        again = client.fine_tuning.jobs.create(training_file=upload.id, model=BASE_ALIAS, hyperparameters=HYPER, seed=3)
        assert wait_finished(client, again.id).status == "succeeded"
    finally:
        second.stop()
        log.close()
    interrupted, straight = _adapter(store, job.id), _adapter(store, again.id)
    assert interrupted.keys() == straight.keys()
    for name in straight:
        torch.testing.assert_close(interrupted[name], straight[name], rtol=0, atol=1e-6, msg=name)
