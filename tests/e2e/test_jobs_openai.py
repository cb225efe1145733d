"""The fine-tuning jobs API end to end: a live `tunesmith serve` with a `jobs:` section, driven by
the official `openai` SDK — upload, create (legacy `hyperparameters` and `method`), poll, events,
checkpoints, chat with the fine-tuned model and a checkpoint, the results file, the registry,
cancel, pause/resume, validation failures with OpenAI's codes, and projects that cannot see each
other. Training is real (`tunesmith train` in its own process) and tiny: 10 tickets, 4 steps."""

from __future__ import annotations

import csv
import io
import json
import signal
import sqlite3

import httpx
import openai
import pytest
import torch
import yaml
from jobs_helpers import (BASE_ALIAS, ServerProcess, dpo_line, events, jobs_settings, pid_alive, ticket_lines,
                          wait_finished, wait_status, wait_until, write_lines)
from safetensors.torch import load_file
from serve_helpers import LiveServer

from tunesmith.serve.config import ServeConfig
from tunesmith.registry.store import Registry
from tuned_helpers import one_thread

pytestmark = pytest.mark.slow
KEY, ACME_KEY = "jobs-key-1", "acme-key-2"
TINY = {"n_epochs": 2, "batch_size": 5}  # 10 examples -> 2 steps per epoch, 4 steps, a checkpoint per epoch
QUESTION = [{"role": "user", "content": "Subject: refund\n\nI was charged twice for order 123."}]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("jobs-openai")


@pytest.fixture(scope="module")
def server(root):
    jobs = jobs_settings(root / "store", projects={"acme": {"api_keys": [ACME_KEY], "max_queued_jobs": 1}},
                         max_upload_bytes=64 * 1024)
    cfg = ServeConfig(api_key=KEY, log_level="warning", default_max_tokens=12, jobs=jobs)
    with one_thread(), LiveServer(cfg) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def acme(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=ACME_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def train_file(client, root):
    return client.files.create(file=write_lines(root / "train.jsonl", ticket_lines(10)).open("rb"), purpose="fine-tune")


@pytest.fixture(scope="module")
def legacy_job(client, train_file):
    """The guides' call: top-level hyperparameters, a suffix."""
    job = client.fine_tuning.jobs.create(training_file=train_file.id, model=BASE_ALIAS, hyperparameters=TINY,
                                         suffix="tickets", seed=7)
    return wait_finished(client, job.id)


def _ask(client, model):
    return client.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=12)


def test_upload_is_a_file_object_with_its_content(client, train_file, root):
    assert train_file.object == "file" and train_file.purpose == "fine-tune" and train_file.id.startswith("file-")
    assert train_file.bytes == (root / "train.jsonl").stat().st_size
    assert client.files.retrieve(train_file.id).filename == "train.jsonl"
    assert client.files.content(train_file.id).content == (root / "train.jsonl").read_bytes()
    assert train_file.id in [f.id for f in client.files.list()]


def test_uploads_are_capped_and_deleted_files_are_gone(client, root):
    with pytest.raises(openai.APIStatusError) as refused:
        client.files.create(file=("big.jsonl", b"{}\n" * 40_000), purpose="fine-tune")
    assert refused.value.status_code == 413
    doomed = client.files.create(file=("doomed.jsonl", b"{}\n"), purpose="fine-tune")
    assert client.files.delete(doomed.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(doomed.id)
    assert not list((root / "store" / "files").glob(doomed.id + "*"))


def test_legacy_hyperparameters_job_succeeds_and_serves_its_model(client, legacy_job, train_file, server):
    job = legacy_job
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:{BASE_ALIAS}:tunesmith:tickets:{job.id.removeprefix('ftjob-')[:8]}"
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 5
    assert job.hyperparameters.learning_rate_multiplier == 1.0  # "auto", shown resolved
    assert job.method.type == "supervised" and job.method.supervised.hyperparameters.batch_size == 5
    assert job.trained_tokens > 0 and job.finished_at >= job.created_at and job.seed == 7
    assert job.training_file == train_file.id and job.organization_id == "tunesmith"
    tuned = _ask(client, job.fine_tuned_model)
    assert tuned.model == job.fine_tuned_model
    assert tuned.choices[0].message.content != _ask(client, BASE_ALIAS).choices[0].message.content
    text = client.completions.create(model=job.fine_tuned_model, prompt="Ticket:", max_tokens=4, temperature=0)
    assert text.model == job.fine_tuned_model and text.usage.completion_tokens > 0
    models = [m.id for m in client.models.list()]
    assert job.fine_tuned_model in models and BASE_ALIAS in models
    assert not any(m.startswith("ft-ftjob") for m in models)  # engine-internal names stay hidden


def test_events_report_each_step_and_the_lifecycle(client, legacy_job):
    found = events(client, legacy_job.id)
    assert all(e.object == "fine_tuning.job.event" and e.level in ("info", "warn", "error") for e in found)
    metrics = [e.data for e in found if e.type == "metrics"]
    assert sorted(m["step"] for m in metrics) == [1, 2, 3, 4]
    assert all(m["total_steps"] == 4 and m["train_loss"] > 0 for m in metrics)
    messages = [e.message for e in reversed(found)]  # the API lists newest first
    assert messages[0].startswith("Created fine-tuning job") and messages[-1] == "The job has successfully completed"
    assert "Files validated, moving job to queued state" in messages
    page = client.fine_tuning.jobs.list_events(legacy_job.id, limit=2)
    assert len(page.data) == 2 and page.has_more


def test_checkpoints_are_listed_and_answer_chat(client, legacy_job):
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(legacy_job.id).data)
    assert [c.step_number for c in checkpoints] == [4, 2]
    first = checkpoints[1]
    assert first.fine_tuned_model_checkpoint == f"{legacy_job.fine_tuned_model}:ckpt-step-2"
    assert first.fine_tuning_job_id == legacy_job.id and first.metrics.train_loss > 0
    # The last checkpoint is the finished model; the epoch-1 one answers differently from both ends.
    final, mid = checkpoints[0].fine_tuned_model_checkpoint, first.fine_tuned_model_checkpoint
    assert _ask(client, final).choices[0].message.content == _ask(client, legacy_job.fine_tuned_model).choices[0].message.content
    assert _ask(client, mid).model == mid


def test_results_file_is_openais_step_metrics_csv(client, legacy_job):
    (result,) = legacy_job.result_files
    assert client.files.retrieve(result).purpose == "fine-tune-results"
    rows = list(csv.DictReader(io.StringIO(client.files.content(result).text)))
    assert list(rows[0]) == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]


def test_succeeded_job_is_a_registry_version_with_lineage(legacy_job, train_file, root):
    registry = Registry(root / "store" / "registry.sqlite3")
    version = registry.get(legacy_job.fine_tuned_model)
    assert version.source == f"job:{legacy_job.id}" and version.version == 1
    assert version.training_file_sha256 == __import__("hashlib").sha256((root / "train.jsonl").read_bytes()).hexdigest()
    assert version.base_sha256 and version.hyperparameters["method"]["supervised"]["hyperparameters"]["n_epochs"] == 2
    assert version.metrics["steps"] == 4 and version.manifest_chain[0]["stage"] == "train"


def test_method_job_with_validation_file_reports_validation_loss(client, root):
    train = client.files.create(file=write_lines(root / "t2.jsonl", ticket_lines(10, 20)).open("rb"), purpose="fine-tune")
    val = client.files.create(file=write_lines(root / "v2.jsonl", ticket_lines(3, 40)).open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        training_file=train.id, validation_file=val.id, model=BASE_ALIAS, metadata={"team": "support"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 5}}})
    assert job.status == "validating_files" and job.metadata == {"team": "support"}
    job = wait_finished(client, job.id)
    assert job.status == "succeeded", job.error
    assert job.validation_file == val.id and job.suffix is None
    valid = [e.data for e in events(client, job.id) if e.type == "metrics" and "valid_loss" in e.data]
    assert valid and valid[0]["valid_loss"] > 0 and 0 <= valid[0]["valid_mean_token_accuracy"] <= 1
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "support"})] == [job.id]
    page = client.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in page.data] == [job.id] and page.has_more  # newest first
    older = client.fine_tuning.jobs.list(limit=50, after=job.id)
    assert job.id not in [j.id for j in older.data]


@pytest.mark.parametrize("lines, param, rule", [
    ([*ticket_lines(9), json.dumps({"messages": [{"role": "user", "content": "hi"}]})], "training_file", "Line 10: "),
    (ticket_lines(4), "training_file", "at least 10"),
])
def test_invalid_training_data_fails_the_job_with_openais_code(client, root, lines, param, rule):
    bad = client.files.create(file=write_lines(root / "bad.jsonl", lines).open("rb"), purpose="fine-tune")
    job = wait_finished(client, client.fine_tuning.jobs.create(training_file=bad.id, model=BASE_ALIAS).id, timeout=60)
    assert job.status == "failed"
    assert job.error.code == "invalid_training_file" and job.error.param == param and rule in job.error.message
    assert job.fine_tuned_model is None
    assert any(e.level == "error" for e in events(client, job.id))


def test_invalid_validation_file_names_the_validation_file(client, root, train_file):
    lines = [json.dumps({"messages": [{"role": "assistant", "content": "first"}, {"role": "user", "content": "q"}]})]
    bad = client.files.create(file=write_lines(root / "badval.jsonl", lines).open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=train_file.id, validation_file=bad.id, model=BASE_ALIAS)
    job = wait_finished(client, job.id, timeout=60)
    assert (job.status, job.error.code, job.error.param) == ("failed", "invalid_validation_file", "validation_file")
    assert "Line 1: bad_role_order" in job.error.message


def test_uploads_and_requests_are_refused_as_openai_refuses_them(client, root, train_file):
    with pytest.raises(openai.BadRequestError) as bad:
        client.files.create(file=("notes.txt", b"{}\n"), purpose="fine-tune")
    assert bad.value.body["param"] == "file" and bad.value.body["code"] == "invalid_file_format"
    with pytest.raises(openai.BadRequestError) as bad:
        client.files.create(file=("x.jsonl", b'{"messages": []}\n{oops\n'), purpose="fine-tune")
    assert "Line 2: invalid_json" in bad.value.body["message"]
    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(training_file=train_file.id, model="gpt-99")
    assert bad.value.body["code"] == "model_not_available" and bad.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(training_file=train_file.id, model=BASE_ALIAS, hyperparameters={"n_epochs": 0})
    assert bad.value.body["param"] == "hyperparameters.n_epochs"
    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(training_file="file-nope", model=BASE_ALIAS)
    assert bad.value.body["param"] == "training_file"
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-nope")


def test_cancel_stops_training_within_seconds(client, server, train_file):
    job = client.fine_tuning.jobs.create(training_file=train_file.id, model=BASE_ALIAS,
                                         hyperparameters={"n_epochs": 50, "batch_size": 1})
    wait_status(client, job.id, "running")
    pid = wait_until(lambda: server.state.jobs.store.job(job.id)["pid"], timeout=30, what="the training process")
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    wait_until(lambda: not pid_alive(pid), timeout=20, what="the training process to stop")
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.resume(job.id)


def test_pause_keeps_the_checkpoint_and_resume_continues_from_it(client, server, train_file):
    job = client.fine_tuning.jobs.create(training_file=train_file.id, model=BASE_ALIAS,
                                         hyperparameters={"n_epochs": 3, "batch_size": 5})
    wait_until(lambda: client.fine_tuning.jobs.checkpoints.list(job.id).data, timeout=240, what="a checkpoint")
    pid = server.state.jobs.store.job(job.id)["pid"]
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    wait_until(lambda: not pid_alive(pid), timeout=20, what="the paused training process to stop")
    assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    job = wait_finished(client, job.id)
    assert job.status == "succeeded", job.error
    assert "Fine-tuning job resumed from its last checkpoint" in [e.message for e in events(client, job.id)]
    steps = [e.data["step"] for e in events(client, job.id) if e.type == "metrics"]
    assert sorted(steps) == list(range(1, 7))  # every step reported once, none skipped


def test_projects_never_see_each_other(client, acme, server, legacy_job, train_file, root):
    with pytest.raises(openai.NotFoundError):
        acme.files.retrieve(train_file.id)
    with pytest.raises(openai.NotFoundError):
        acme.files.content(train_file.id)
    with pytest.raises(openai.NotFoundError):
        acme.fine_tuning.jobs.retrieve(legacy_job.id)
    with pytest.raises(openai.NotFoundError):
        acme.fine_tuning.jobs.list_events(legacy_job.id)
    with pytest.raises(openai.NotFoundError):
        acme.fine_tuning.jobs.cancel(legacy_job.id)
    with pytest.raises(openai.NotFoundError):
        _ask(acme, legacy_job.fine_tuned_model)
    assert legacy_job.id not in [j.id for j in acme.fine_tuning.jobs.list(limit=100)]
    assert train_file.id not in [f.id for f in acme.files.list()]
    assert legacy_job.fine_tuned_model not in [m.id for m in acme.models.list()]
    with pytest.raises(openai.BadRequestError):  # another project's file cannot train either
        acme.fine_tuning.jobs.create(training_file=train_file.id, model=BASE_ALIAS)
    own = acme.files.create(file=write_lines(root / "acme.jsonl", ticket_lines(4)).open("rb"), purpose="fine-tune")
    assert acme.files.list().data[0].id == own.id
    with httpx.Client(base_url=server.url) as http:
        assert http.get("/v1/files", headers={"Authorization": "Bearer wrong"}).status_code == 401
        # A project's key acts on its project only, never on the whole server.
        unload = http.post("/v1/unload_lora_adapter", headers={"Authorization": f"Bearer {ACME_KEY}"},
                           json={"lora_name": f"ft-{legacy_job.id}"})
        assert unload.status_code == 401
        assert http.get("/metrics", headers={"Authorization": f"Bearer {ACME_KEY}"}).status_code == 401


def test_queued_jobs_per_project_are_capped(acme, root):
    # acme may have one job waiting; its jobs are refused 429 while one is validating or queued.
    own = acme.files.create(file=write_lines(root / "acme-cap.jsonl", ticket_lines(4)).open("rb"), purpose="fine-tune")
    with pytest.raises(openai.RateLimitError) as refused:
        for _ in range(3):
            acme.fine_tuning.jobs.create(training_file=own.id, model=BASE_ALIAS)
    assert refused.value.body["code"] == "rate_limit_exceeded"


def test_dpo_job_succeeds(client, root):
    lines = [dpo_line(f"Ticket {i}: refund please", '{"category": "billing"}', "no idea") for i in range(10)]
    train = client.files.create(file=write_lines(root / "dpo.jsonl", lines).open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=train.id, model=BASE_ALIAS, method={
        "type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1, "batch_size": 5}}})
    job = wait_finished(client, job.id)
    assert job.status == "succeeded", job.error
    assert job.method.dpo.hyperparameters.beta == 0.2
    assert _ask(client, job.fine_tuned_model).model == job.fine_tuned_model



def _adapter(store, job_id):
    return load_file(str(store / "runs" / job_id / "train" / "adapter" / "adapter_model.safetensors"))


def test_sigkill_mid_job_resumes_and_matches_the_uninterrupted_run(tmp_path, legacy_job, root):
    """A server killed with SIGKILL mid-job takes its training process with it; started again on
    the same store it resumes the job from its last checkpoint, and the job ends with the weights
    of the same job run without interruption (`legacy_job`: same data, hyperparameters, seed)."""
    store = tmp_path / "store"
    config = tmp_path / "serve.yaml"
    # A checkpoint every step leaves time to kill the server before the job ends; checkpoints do
    # not change the weights training reaches.
    config.write_text(yaml.safe_dump({"api_key": KEY, "log_level": "warning",
                                      "jobs": jobs_settings(store, checkpoint_every=1)}))
    log = open(tmp_path / "server.log", "ab")
    first = ServerProcess(config, log, KEY)
    try:
        client = first.client()
        upload = client.files.create(file=(root / "train.jsonl").open("rb"), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(training_file=upload.id, model=BASE_ALIAS, hyperparameters=TINY,
                                             suffix="tickets", seed=7)
        wait_until(lambda: client.fine_tuning.jobs.checkpoints.list(job.id).data, timeout=240, what="a checkpoint")
        with sqlite3.connect(store / "jobs.sqlite3") as db:
            trainer = db.execute("SELECT pid FROM jobs WHERE id = ?", (job.id,)).fetchone()[0]
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()
        wait_until(lambda: not pid_alive(trainer), timeout=20, what="the training process to die with the server")
    finally:
        first.stop()
    second = ServerProcess(config, log, KEY)
    try:
        client = second.client()
        resumed = wait_finished(client, job.id)
        assert resumed.status == "succeeded", resumed.error
        messages = [e.message for e in events(client, job.id)]
        assert any("interrupted" in m for m in messages)
        assert "Fine-tuning job resumed from its last checkpoint" in messages
        assert sorted(e.data["step"] for e in events(client, job.id) if e.type == "metrics") == [1, 2, 3, 4]
        answer = client.chat.completions.create(model=resumed.fine_tuned_model, max_tokens=4,
                                                messages=[{"role": "user", "content": "hi"}])
        assert answer.model == resumed.fine_tuned_model
    finally:
        second.stop()
        log.close()
    interrupted, straight = _adapter(store, job.id), _adapter(root / "store", legacy_job.id)
    assert interrupted.keys() == straight.keys()
    for name in straight:
        torch.testing.assert_close(interrupted[name], straight[name], rtol=0, atol=1e-6, msg=name)
