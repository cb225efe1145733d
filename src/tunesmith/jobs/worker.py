"""The supervisor: moves jobs through their states and runs each one's training in its own process.

One thread in the server process owns every state change that follows creation: it validates a
job's files (validating_files -> queued or failed), starts queued jobs while a slot is free
(launcher command, `--resume latest` when the job has a checkpoint), turns metrics.jsonl and
new checkpoints into events and checkpoint rows, stops processes asked to cancel or pause, and
finishes jobs (succeeded: results CSV, servable checkpoints, registry, hot-loaded model).

Training processes get their own process group (a cancel stops launcher and workers together)
and die with the server (PR_SET_PDEATHSIG). A job found `running` at start-up was interrupted:
its leftover process group is killed and it is queued again; it resumes from its last checkpoint.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import yaml

from tunesmith.jobs import artifacts, spec
from tunesmith.jobs.store import JobStore
from tunesmith.jobs.validation import FileProblem, check_examples

if TYPE_CHECKING:
    from tunesmith.jobs.service import JobsService

log = logging.getLogger("tunesmith.jobs")
TOTAL_STEPS = re.compile(r", (\d+) steps; ")
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass  # not Linux: start-up recovery still kills a leftover process group


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
    def __init__(self, service: "JobsService"):
        self.service = service
        self.cfg = service.cfg
        self.store: JobStore = service.store
        self.running: dict[str, Running] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._recover()
        self._thread = threading.Thread(target=self._loop, name="tunesmith-jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop and the training processes; their jobs stay `running` in the database and
        resume from their last checkpoint when a server starts on this store again."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        for run in list(self.running.values()):
            self._terminate(run, force=True)

    def _recover(self) -> None:
        for job in self.store.jobs_in("running"):
            if job["pid"] and _alive(job["pid"]) and job["run_dir"] in _cmdline(job["pid"]):
                _kill_group(job["pid"], signal.SIGKILL)
            request = job["stop_request"]
            if request == "cancel":
                self.store.update_job(job["id"], status="cancelled", stop_request=None, pid=None,
                                      finished_at=int(time.time()))
            else:
                self.store.update_job(job["id"], status="queued", stop_request=None, pid=None)
                self.store.add_event(job["id"], "The job was interrupted (the server stopped); it resumes from its "
                                                "last checkpoint.", level="warn")
        for job in self.store.jobs_in("paused", "cancelled"):
            if job["stop_request"] and job["pid"] and _alive(job["pid"]):
                _kill_group(job["pid"], signal.SIGKILL)
            if job["stop_request"]:
                self.store.update_job(job["id"], stop_request=None, pid=None)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # one bad job must not stop the supervisor
                log.exception("jobs supervisor step failed")
            self._stop.wait(self.cfg.poll_seconds)

    def tick(self) -> None:
        for job in self.store.jobs_in("validating_files"):
            self._validate(job)
        for run in list(self.running.values()):
            self._watch(run)
        free = [s for s in range(self.cfg.parallel_jobs) if s not in {r.slot for r in self.running.values()}]
        for job in self.store.jobs_in("queued")[: len(free)]:
            self._launch(job, free.pop(0))

    # ------------------------------------------------------------------ validating_files

    def _validate(self, job: dict[str, Any]) -> None:
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
                if role == "training" and len(rows) < self.cfg.min_examples:
                    raise FileProblem(None, "too_few_examples", f"the file has {len(rows)} example(s), but must "
                                                                 f"have at least {self.cfg.min_examples}")
                if role == "validation" and not rows:
                    raise FileProblem(None, "too_few_examples", "the file has no examples")
            except FileProblem as problem:
                self.fail(job, f"invalid_{role}_file", f"{role}_file",
                           f"The job failed due to an invalid {role} file. {problem}")
                return
            outputs["train.jsonl" if role == "training" else "val.jsonl"] = rows
        from tunesmith.data.schema import dumps_row

        for name, rows in outputs.items():
            (data_dir / name).write_text("".join(dumps_row(r) + "\n" for r in rows), encoding="utf-8")
        resolved = spec.resolve(job["method"], len(outputs["train.jsonl"]))
        base = self.service.base_entry(job["model"])
        config = spec.train_config(
            base_path=base.path, learning_rate=base.learning_rate or self.cfg.base_learning_rate, resolved=resolved,
            seed=job["seed"], data_dir=str(data_dir), output_dir=str(Path(job["run_dir"]) / "train"),
            max_seq_len=self.cfg.max_seq_len, lora_r=self.cfg.lora_r, checkpoint_every=self.cfg.checkpoint_every,
            keep_checkpoints=self.cfg.keep_checkpoints)
        (Path(job["run_dir"]) / "train.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        if self.store.update_job(job["id"], only_if_status=("validating_files",), status="queued", method=resolved):
            self.store.add_event(job["id"], "Files validated, moving job to queued state")

    # ------------------------------------------------------------------ running

    def _launch(self, job: dict[str, Any], slot: int) -> None:
        # Claim the job first: a pause or cancel that lands from now on sees `running` and asks
        # _watch to stop the process, instead of being overwritten by this launch.
        if not self.store.update_job(job["id"], only_if_status=("queued",), status="running",
                                     started_at=job["started_at"] or int(time.time())):
            return
        run_dir = Path(job["run_dir"])
        out = run_dir / "train"
        resume = bool(artifacts_checkpoints(out))
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
            return
        logfile.close()
        last = self._last_event_step(job["id"])
        self.running[job["id"]] = Running(job["id"], process, slot, run_dir, time.time(), last, last,
                                          total_steps=job["total_steps"])
        self.store.update_job(job["id"], pid=process.pid)
        self.store.add_event(job["id"], "Fine-tuning job resumed from its last checkpoint" if resume
                             else "Fine-tuning job started")
        # A cancel or pause that arrived while the job was being launched is honoured by _watch.

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
            self.store.update_job(run.job_id, stop_request=None, pid=None)
            self.store.add_event(run.job_id, f"Fine-tuning job {stopped}; training stopped")
            return
        if code == 0:
            self._read_progress(run, job)
            self.service.finish(job, run.records)
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
        for checkpoint in artifacts_checkpoints(out):
            step = int(checkpoint.name.removeprefix(artifacts.CHECKPOINT_PREFIX))
            metrics = _step_metrics(run.records, step)
            if self.store.add_checkpoint(run.job_id, step, artifacts.checkpoint_name(model, step), metrics):
                self.store.add_event(run.job_id, f"Checkpoint created at step {step}")

    def fail(self, job: dict[str, Any], code: str, param: Optional[str], message: str) -> None:
        if self.store.update_job(job["id"], only_if_status=("validating_files", "queued", "running"), status="failed",
                                 error={"code": code, "message": message, "param": param}, pid=None,
                                 finished_at=int(time.time())):
            self.store.add_event(job["id"], message, level="error")


def artifacts_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints of a training run, oldest first. The rule is train.checkpoint's
    (`step-NNNNNNN` with its completion marker), read here without importing the train stage."""
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(artifacts.CHECKPOINT_PREFIX)
            and (p / "complete.json").is_file()]
    return sorted(done, key=lambda p: int(p.name.removeprefix(artifacts.CHECKPOINT_PREFIX)))


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
