"""The jobs worker: moves jobs through their states and runs each one's training in its own process.

A worker (a thread in `tunesmith serve`, or `tunesmith jobs worker`) owns every state change that
follows creation: it validates a job's files (validating_files -> queued or failed), starts queued
jobs while a slot is free (launcher command, `--resume latest` when the job has a checkpoint),
turns metrics.jsonl and new checkpoints into events and servable checkpoint adapters, stops
processes asked to cancel or pause, and finishes jobs (`tunesmith.jobs.finish`).

Several workers may share one store. A worker claims a job with one conditional UPDATE (so two
never hold the same job) and renews the claim's lease every poll. A job whose lease lapsed (its
worker was killed, or lost the store), or whose worker on this host is no longer alive, is taken
back by any worker: queued again, it resumes from its last checkpoint. Training processes get
their own process group (a cancel stops launcher and workers together) and die with their worker
(PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from tunesmith.jobs import artifacts, spec
from tunesmith.jobs.config import WorkerSettings
from tunesmith.jobs.store import JobStore
from tunesmith.jobs.validation import FileProblem, check_examples

log = logging.getLogger("tunesmith.jobs")
TOTAL_STEPS = re.compile(r", (\d+) steps; ")
PR_SET_PDEATHSIG = 1
HOST = socket.gethostname()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass  # not Linux: lease recovery still kills a leftover process group on this host


def _alive(pid: Optional[int]) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def new_worker_id() -> str:
    """`host:pid:token`: the host and pid let a worker on the same host see that another is gone."""
    return f"{HOST}:{os.getpid()}:{secrets.token_hex(3)}"


def _gone(worker: Optional[str]) -> bool:
    """Whether `worker` is known to be dead: no worker at all, or one of this host whose process is gone."""
    if worker is None:
        return True
    host, _, rest = worker.partition(":")
    pid = rest.partition(":")[0]
    return host == HOST and pid.isdigit() and not _alive(int(pid))


@dataclass
class Running:
    job_id: str
    process: subprocess.Popen
    slot: int
    run_dir: Path
    started: float
    first_step: int
    last_step: int
    metrics_offset: int = 0
    total_steps: Optional[int] = None
    stop_sent: Optional[float] = None
    records: list[dict[str, Any]] = field(default_factory=list)


class Supervisor:
    """One worker. `legacy_settings(job)` gives the settings of a job created before jobs carried
    them (the server's worker knows its bases); `before_success(job)` runs just before a job is
    marked succeeded (the server's worker loads the model, so it answers as soon as the job says so)."""

    def __init__(self, store: JobStore, cfg: WorkerSettings, *,
                 legacy_settings: Optional[Callable[[dict[str, Any]], dict[str, Any]]] = None,
                 before_success: Optional[Callable[[dict[str, Any]], None]] = None):
        self.store = store
        self.cfg = cfg
        self.worker = new_worker_id()
        self.legacy_settings = legacy_settings
        self.before_success = before_success
        self.running: dict[str, Running] = {}
        self._validating: set[str] = set()  # the job being validated, for the heartbeat
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self.loop, name="tunesmith-jobs", daemon=True)
        self._thread.start()

    def loop(self) -> None:
        heartbeat = threading.Thread(target=self._heartbeat, name="tunesmith-jobs-leases", daemon=True)
        heartbeat.start()
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # one bad job must not stop the worker
                log.exception("jobs worker step failed")
            self._stop.wait(self.cfg.poll_seconds)

    def stop(self) -> None:
        """Stop the loop and the training processes and drop this worker's claims: their jobs
        stay `running` in the database and resume from their last checkpoint on the next worker
        (another one now, or this one started again)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(30)
        for run in list(self.running.values()):
            self._terminate(run, force=True)
            self.store.release(run.job_id, self.worker)
        self.running.clear()

    def tick(self) -> None:
        self._renew()
        self._recover()
        for job in self.store.jobs_in("validating_files"):
            self._validate(job)
        for run in list(self.running.values()):
            self._watch(run)
        free = [s for s in range(self.cfg.parallel_jobs) if s not in {r.slot for r in self.running.values()}]
        for job in self.store.jobs_in("queued"):
            if not free:
                break
            if self._launch(job, free[0]):
                free.pop(0)

    def _lease(self) -> float:
        return time.time() + self.cfg.lease_seconds

    def _heartbeat(self) -> None:
        """Renew the leases on a thread of their own, so that a long step of the loop (importing
        torch for the first export, validating a large file, registering a model) never lets a
        lease lapse while this worker is alive. Whether a lease was lost is decided by the loop
        alone (`_renew`), which is the thread that claims and releases jobs."""
        while not self._stop.wait(self.cfg.poll_seconds):
            try:
                for job_id in [*self.running, *self._validating]:
                    self.store.renew(job_id, self.worker, self._lease())
            except Exception:
                log.exception("renewing the jobs' leases failed")

    def _renew(self) -> None:
        for run in list(self.running.values()):
            if not self.store.renew(run.job_id, self.worker, self._lease()):
                # Another worker took the job over (this one stalled past its lease): stop training
                # at once, so two processes never write the same run directory for long.
                log.warning("job %s was taken over by another worker; stopping its training here", run.job_id)
                self._terminate(run, force=True)
                del self.running[run.job_id]

    def _recover(self) -> None:
        """Take back the jobs of workers that are gone or whose lease lapsed."""
        now = time.time()
        for job in self.store.claimed_jobs():
            holder = job["worker"]
            if holder == self.worker or not (_gone(holder) or (job["lease_until"] or 0) < now):
                continue
            if holder is None or holder.partition(":")[0] == HOST:
                pid = job["pid"]  # a leftover training process of a dead worker on this host
                if pid and _alive(pid) and job["run_dir"] in _cmdline(pid):
                    _kill_group(pid, signal.SIGKILL)
            if job["status"] == "running":
                changes = dict(status="cancelled", finished_at=int(now)) if job["stop_request"] == "cancel" \
                    else dict(status="queued")
                if self.store.release(job["id"], holder, stop_request=None, pid=None, **changes) \
                        and changes["status"] == "queued":
                    self.store.add_event(job["id"], "The job was interrupted (its worker stopped); it resumes from "
                                                    "its last checkpoint.", level="warn")
            else:  # a paused or cancelled job whose process was being stopped, or a validation
                self.store.release(job["id"], holder, stop_request=None, pid=None)

    # ------------------------------------------------------------------ validating_files

    def settings(self, job: dict[str, Any]) -> Optional[dict[str, Any]]:
        if job.get("settings"):
            return job["settings"]
        return self.legacy_settings(job) if self.legacy_settings is not None else None

    def _validate(self, job: dict[str, Any]) -> None:
        if not self.store.claim(job["id"], self.worker, self._lease(), from_status="validating_files",
                                now=time.time()):
            return  # another worker is validating it
        self._validating.add(job["id"])
        try:
            self._validate_claimed(job)
        finally:
            self._validating.discard(job["id"])

    def _validate_claimed(self, job: dict[str, Any]) -> None:
        settings = self.settings(job)
        if settings is None:
            self.fail(job, "invalid_job", None, "The job was created by an earlier tunesmith without its training "
                                                "settings; create it again.")
            return
        data_dir = Path(job["run_dir"]) / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        method = job["method"]["type"]
        self.store.add_event(job["id"], f"Validating training file: {job['training_file']}"
                             + (f" and validation file: {job['validation_file']}" if job["validation_file"] else ""))
        outputs = {}
        for role in ("training", "validation"):
            file_id = job[f"{role}_file"]
            if file_id is None:
                continue
            record = self.store.file(file_id, job["project"])
            try:
                if record is None:
                    raise FileProblem(None, "file_not_found", f"the file {file_id} was deleted")
                rows = check_examples(Path(record["path"]), method)
                if role == "training" and len(rows) < settings["min_examples"]:
                    raise FileProblem(None, "too_few_examples", f"the file has {len(rows)} example(s), but must "
                                                                 f"have at least {settings['min_examples']}")
                if role == "validation" and not rows:
                    raise FileProblem(None, "too_few_examples", "the file has no examples")
            except FileProblem as problem:
                self.fail(job, f"invalid_{role}_file", f"{role}_file",
                          f"The job failed due to an invalid {role} file. {problem}")
                return
            outputs["train.jsonl" if role == "training" else "val.jsonl"] = rows
        from tunesmith.data.schema import dumps_row

        for name, rows in outputs.items():  # renamed into place: a reader never sees half a file
            tmp = data_dir / f".{name}.{self.worker.rpartition(':')[2]}"
            tmp.write_text("".join(dumps_row(r) + "\n" for r in rows), encoding="utf-8")
            os.replace(tmp, data_dir / name)
        config, note = self._train_config(job, settings, len(outputs["train.jsonl"]), data_dir)
        resolved = config.pop("_resolved")
        tmp = Path(job["run_dir"]) / f".train.yaml.{self.worker.rpartition(':')[2]}"
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        os.replace(tmp, Path(job["run_dir"]) / "train.yaml")
        if self.store.update_job(job["id"], only_if_status=("validating_files",), status="queued",
                                 method=resolved, worker=None, lease_until=None):
            if note:
                self.store.add_event(job["id"], note)
            self.store.add_event(job["id"], "Files validated, moving job to queued state")
        else:  # cancelled meanwhile
            self.store.release(job["id"], self.worker)

    def _train_config(self, job: dict[str, Any], settings: dict[str, Any], examples: int,
                      data_dir: Path) -> tuple[dict[str, Any], Optional[str]]:
        """The job's `tunesmith train` config (and its resolved method under `_resolved`, popped
        before writing), with batch_size "auto" lowered to what the memory plan fits."""
        def build(resolved: dict[str, Any]) -> dict[str, Any]:
            return spec.train_config(
                base_path=settings["base_path"], learning_rate=settings["learning_rate"], resolved=resolved,
                seed=job["seed"], data_dir=str(data_dir), output_dir=str(Path(job["run_dir"]) / "train"),
                max_seq_len=settings["max_seq_len"], lora_r=settings["lora_r"],
                checkpoint_every=settings["checkpoint_every"], keep_checkpoints=settings["keep_checkpoints"])

        resolved = spec.resolve(job["method"], examples)
        note = None
        if spec.requested(job["method"])["batch_size"] == "auto":
            from tunesmith.jobs.planning import largest_batch

            rule = spec.requested(resolved)["batch_size"]
            fits, where = largest_batch(lambda b: build(spec.with_batch_size(resolved, b)), rule, self.cfg.memory)
            if fits < rule:
                resolved = spec.with_batch_size(resolved, fits)
                note = (f"batch_size auto: {fits}, the largest the memory plan fits in {where} "
                        f"(the data alone would give {rule})")
        config = build(resolved)
        config["_resolved"] = resolved
        return config, note

    # ------------------------------------------------------------------ running

    def _launch(self, job: dict[str, Any], slot: int) -> bool:
        # Claim the job first: a pause or cancel that lands from now on sees `running` and asks
        # _watch to stop the process, instead of being overwritten by this launch.
        now = time.time()
        if not self.store.claim(job["id"], self.worker, self._lease(), from_status="queued", now=now,
                                status="running", started_at=job["started_at"] or int(now)):
            return False
        run_dir = Path(job["run_dir"])
        out = run_dir / "train"
        resume = bool(artifacts.complete_checkpoints(out))
        if not resume and out.exists():
            import shutil

            shutil.rmtree(out)  # a start that died before its first checkpoint: begin afresh
        argv = shlex.split(self.cfg.launcher.format(python=shlex.quote(sys.executable),
                                                    config=shlex.quote(str(run_dir / "train.yaml")),
                                                    run_dir=shlex.quote(str(run_dir)), job_id=job["id"]))
        if resume:
            argv += ["--resume", "latest"]
        env = dict(os.environ)
        if self.cfg.devices:
            env["CUDA_VISIBLE_DEVICES"] = self.cfg.devices[slot % len(self.cfg.devices)]
        logfile = open(run_dir / "train.log", "ab")
        try:
            process = subprocess.Popen(argv, cwd=run_dir, env=env, stdin=subprocess.DEVNULL, stdout=logfile,
                                       stderr=subprocess.STDOUT, start_new_session=True,
                                       preexec_fn=_die_with_parent)
        except OSError as exc:
            logfile.close()
            self.fail(job, "launch_failed", None, f"The training process could not start: {exc}")
            return True
        logfile.close()
        last = self._last_event_step(job["id"])
        self.running[job["id"]] = Running(job["id"], process, slot, run_dir, time.time(), last, last,
                                          total_steps=job["total_steps"])
        self.store.update_job(job["id"], pid=process.pid)
        self.store.add_event(job["id"], "Fine-tuning job resumed from its last checkpoint" if resume
                             else "Fine-tuning job started")
        # A cancel or pause that arrived while the job was being launched is honoured by _watch.
        return True

    def _last_event_step(self, job_id: str) -> int:
        row = self.store.db.one("SELECT MAX(CAST(json_extract(data, '$.step') AS INTEGER)) FROM events "
                                "WHERE job_id = ? AND type = 'metrics'", (job_id,))
        return int(row[0] or 0)

    def _watch(self, run: Running) -> None:
        job = self.store.job(run.job_id)
        self._read_progress(run, job)
        if job["stop_request"]:
            if run.stop_sent is None:
                self._terminate(run)
            elif time.time() - run.stop_sent > self.cfg.cancel_grace_seconds:
                _kill_group(run.process.pid, signal.SIGKILL)
        code = run.process.poll()
        if code is None:
            return
        del self.running[run.job_id]
        _kill_group(run.process.pid, signal.SIGKILL)  # launcher children that outlived it
        job = self.store.job(run.job_id)
        if job["stop_request"]:
            stopped = "cancelled" if job["stop_request"] == "cancel" else "paused"
            self.store.release(run.job_id, self.worker, stop_request=None, pid=None)
            self.store.add_event(run.job_id, f"Fine-tuning job {stopped}; training stopped")
            return
        if code == 0:
            from tunesmith.jobs.finish import finish

            self._read_progress(run, job)
            finish(self, job)
        else:
            tail = _log_tail(run.run_dir / "train.log")
            self.fail(job, "training_failed", None, f"Training exited with status {code}: {tail}")

    def _terminate(self, run: Running, force: bool = False) -> None:
        run.stop_sent = time.time()
        _kill_group(run.process.pid, signal.SIGKILL if force else signal.SIGTERM)
        if force:
            try:
                run.process.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def _read_progress(self, run: Running, job: dict[str, Any]) -> None:
        out = run.run_dir / "train"
        if run.total_steps is None:
            found = TOTAL_STEPS.search(_log_tail(run.run_dir / "train.log", 64_000))
            if found:
                run.total_steps = int(found.group(1))
                self.store.update_job(run.job_id, total_steps=run.total_steps)
        records, run.metrics_offset = artifacts.read_metrics(out / "metrics.jsonl", run.metrics_offset)
        run.records += records
        for record in records:
            step = int(record.get("step", 0))
            if "loss" in record and step > run.last_step:
                run.last_step = step
                data = {"step": step, "train_loss": record["loss"], "total_steps": run.total_steps,
                        "train_mean_token_accuracy": record.get("mean_token_accuracy")}
                self.store.add_event(run.job_id, f"Step {step}/{run.total_steps or '?'}: training loss={record['loss']:.4f}",
                                     type="metrics", data=data)
            if "val_loss" in record:
                self.store.add_event(run.job_id, f"Step {step}: validation loss={record['val_loss']:.4f}", type="metrics",
                                     data={"step": step, "valid_loss": record["val_loss"],
                                           "valid_mean_token_accuracy": record.get("val_mean_token_accuracy"),
                                           "total_steps": run.total_steps})
        if run.total_steps and run.last_step > run.first_step:
            per_step = (time.time() - run.started) / (run.last_step - run.first_step)
            self.store.update_job(run.job_id, estimated_finish=int(time.time() + per_step * (run.total_steps - run.last_step)))
        model = artifacts.model_name(job["model"], job["organization_id"], job["suffix"], job["id"])
        for checkpoint in artifacts.complete_checkpoints(out):
            step = int(checkpoint.name.removeprefix(artifacts.CHECKPOINT_PREFIX))
            if self.store.has_checkpoint(run.job_id, step):
                continue
            # Written as an adapter now, so the checkpoint answers requests while the job runs.
            target = run.run_dir / "checkpoints" / f"step-{step}"
            layout = out / artifacts.ADAPTER_LAYOUT
            servable = layout.is_dir() and artifacts.export_checkpoint(checkpoint, layout, target)
            if self.store.add_checkpoint(run.job_id, step, artifacts.checkpoint_name(model, step),
                                         _step_metrics(run.records, step), str(target) if servable else None):
                self.store.add_event(run.job_id, f"Checkpoint created at step {step}")

    def fail(self, job: dict[str, Any], code: str, param: Optional[str], message: str) -> None:
        if self.store.update_job(job["id"], only_if_status=("validating_files", "queued", "running"), status="failed",
                                 error={"code": code, "message": message, "param": param}, pid=None,
                                 finished_at=int(time.time()), worker=None, lease_until=None):
            self.store.add_event(job["id"], message, level="error")


def _step_metrics(records: list[dict[str, Any]], step: int) -> dict[str, Any]:
    metrics: dict[str, Any] = {"step": step, "train_loss": None, "train_mean_token_accuracy": None,
                               "valid_loss": None, "valid_mean_token_accuracy": None, "full_valid_loss": None,
                               "full_valid_mean_token_accuracy": None}
    for record in records:
        if int(record.get("step", -1)) == step:
            if "loss" in record:
                metrics["train_loss"] = record["loss"]
                metrics["train_mean_token_accuracy"] = record.get("mean_token_accuracy")
            if "val_loss" in record:
                metrics["valid_loss"] = metrics["full_valid_loss"] = record["val_loss"]
                metrics["valid_mean_token_accuracy"] = metrics["full_valid_mean_token_accuracy"] = \
                    record.get("val_mean_token_accuracy")
    return metrics


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _log_tail(path: Path, size: int = 2000) -> str:
    if not path.is_file():
        return ""
    with open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - size))
        text = fh.read().decode("utf-8", "replace").strip()
    return text if size > 2000 else " | ".join(text.splitlines()[-4:])
