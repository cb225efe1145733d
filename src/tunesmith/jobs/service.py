"""`JobsService`: the jobs side of one server — tenancy, the store, the worker (unless a
separate `tunesmith jobs worker` runs the jobs), and the fine-tuned models it serves through the
adapter hot-load path.

API keys belong to projects. The server's own key (or no key at all, when the server has none)
is the project `default`; `jobs.projects` adds tenants with their own keys. Every lookup is by
(project, id), so another project's file, job or model is simply not found (404, never 403).

Models come from the store, whoever trained them: a thread reads the servable models (succeeded
jobs and written checkpoints, of running jobs too) every `poll_seconds`, loads new ones into the
engine and unloads the ones that are gone (checkpoints rotated away when their job finished). A
request for a model the store has but the thread has not loaded yet loads it on the spot.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from tunesmith.jobs.config import BaseModelEntry, JobsConfig
from tunesmith.jobs.store import JobStore
from tunesmith.jobs.worker import Supervisor
from tunesmith.serve.protocol import model_not_found

if TYPE_CHECKING:
    from tunesmith.serve.adapters import Target
    from tunesmith.serve.state import ServeState

log = logging.getLogger("tunesmith.jobs")
DEFAULT_PROJECT = "default"


class JobsService:
    def __init__(self, cfg: JobsConfig, state: "ServeState"):
        self.cfg = cfg
        self.state = state
        self.store = JobStore(cfg.root)
        self.supervisor: Optional[Supervisor] = Supervisor(
            self.store, cfg, legacy_settings=lambda job: self.job_settings(job["model"]),
            before_success=self._serve_finished) if cfg.run_worker else None
        self._keys: list[tuple[bytes, str]] = [
            (key.get_secret_value().encode("utf-8"), name)
            for name, project in cfg.projects.items() for key in project.api_keys]
        self._served: dict[str, tuple[str, str]] = {}  # model name -> (adapter name in the engine, project)
        self._served_lock = threading.Lock()
        self._load_lock = threading.Lock()  # one load at a time: the sync thread and a request may race
        self._failed: set[str] = set()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._check_bases()

    def _check_bases(self) -> None:
        from tunesmith.errors import ModelError, ServeError
        from tunesmith.models.loading import resolve_model_path

        def resolved(path: str) -> str:
            try:
                return resolve_model_path(path)
            except ModelError:
                return path

        for name, entry in self.cfg.base_models.items():
            if resolved(entry.path) != self.state.served_model:
                raise ServeError(f"jobs.base_models.{name} is {entry.path}, but this server serves "
                                 f"{self.state.served_model}; fine-tuned models must be served on their base",
                                 hint="map the name to the served model, or run a server for that base")

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.sync_models()
        self._thread = threading.Thread(target=self._sync_loop, name="tunesmith-jobs-models", daemon=True)
        self._thread.start()
        if self.supervisor is not None:
            self.supervisor.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        if self.supervisor is not None:
            self.supervisor.stop()

    def job_settings(self, model: str) -> dict[str, Any]:
        """What a job created now trains with, fixed at creation, so every worker (in this server
        or not) trains it the same way."""
        base = self.base_entry(model)
        return {"base_path": base.path, "learning_rate": base.learning_rate or self.cfg.base_learning_rate,
                "max_seq_len": self.cfg.max_seq_len, "lora_r": self.cfg.lora_r,
                "checkpoint_every": self.cfg.checkpoint_every, "keep_checkpoints": self.cfg.keep_checkpoints,
                "min_examples": self.cfg.min_examples}

    # ------------------------------------------------------------------ tenancy

    def project_for(self, authorization: str) -> Optional[str]:
        """The project an `Authorization: Bearer KEY` header belongs to, or None. Every key is
        compared (in constant time), so the time taken says nothing about which one matched."""
        scheme, _, token = (authorization or "").partition(" ")
        token_bytes = token.strip().encode("utf-8") if scheme.lower() == "bearer" else b""
        found = None
        for key, project in self._keys:
            if hmac.compare_digest(token_bytes, key) and found is None:
                found = project
        server_key = self.state.api_key
        if server_key and hmac.compare_digest(token_bytes, server_key.encode("utf-8")):
            found = found or DEFAULT_PROJECT
        if found is None and not server_key and not self._keys:
            found = DEFAULT_PROJECT  # an open server (no keys at all) is one project
        return found

    def organization(self, project: str) -> str:
        return self.cfg.organization if project == DEFAULT_PROJECT else project

    def queued_limit(self, project: str) -> int:
        settings = self.cfg.projects.get(project)
        if settings is not None and settings.max_queued_jobs is not None:
            return settings.max_queued_jobs
        return self.cfg.max_queued_jobs_per_project

    # ------------------------------------------------------------------ bases and models

    def base_names(self) -> list[str]:
        return [self.state.base.name, *self.cfg.base_models]

    def base_entry(self, name: str) -> BaseModelEntry:
        return self.cfg.base_models.get(name) or BaseModelEntry(path=self.state.cfg.model.path)

    def resolve_model(self, name: str, project: Optional[str]) -> Optional["Target"]:
        """A base alias, or a fine-tuned model of `project`; None when the name is neither (the
        server then looks at its own adapters). An engine-internal adapter name of a fine-tuned
        model, or another project's model, is not found."""
        if name in self.cfg.base_models:
            return self.state.base
        if name not in self._served:
            self._load_on_request(name, project)
        with self._served_lock:
            served = self._served.get(name)
            internal = {adapter: owner for adapter, owner in self._served.values()}
        if served is not None:
            adapter, owner = served
            prepared = self.state.registry.get(adapter) if owner == project else None
            if prepared is not None:  # answers under its public name; the engine keeps the adapter's
                return dataclasses.replace(prepared.target, name=name)
        if served is not None or name in internal:
            raise model_not_found(name, [*self.base_names(), *self.models_of(project)])
        return None

    def models_of(self, project: Optional[str]) -> list[str]:
        with self._served_lock:
            return [name for name, (_, owner) in self._served.items() if owner == project]

    def model_objects(self, project: Optional[str], created: int) -> list[dict[str, Any]]:
        """/v1/models entries: the base's aliases, then the project's fine-tuned models and checkpoints."""
        base = self.state.base.name
        data = [{"id": name, "object": "model", "created": created, "owned_by": "tunesmith", "root": entry.path,
                 "parent": base} for name, entry in self.cfg.base_models.items()]
        for name in self.models_of(project):
            data.append({"id": name, "object": "model", "created": created,
                         "owned_by": self.organization(project or DEFAULT_PROJECT),
                         "root": name.split(":")[1], "parent": name.split(":ckpt-step-")[0] if ":ckpt-step-" in name
                         else name.split(":")[1]})
        return data

    def hides(self, adapter: str) -> bool:
        """Whether a registry adapter name is a fine-tuned model's engine name (not listed as such)."""
        with self._served_lock:
            return any(adapter == internal for internal, _ in self._served.values())

    # ------------------------------------------------------------------ loading models from the store

    def _sync_loop(self) -> None:
        while not self._stop.wait(self.cfg.poll_seconds):
            try:
                self.sync_models()
            except Exception:  # the next poll tries again
                log.exception("reading the jobs' models failed")

    def sync_models(self) -> None:
        rows = self.store.servable_models()
        for row in rows:
            if row["model"] not in self._served and row["model"] not in self._failed:
                self._load(row)
        present = {row["model"] for row in rows}
        with self._served_lock:
            gone = [(name, adapter) for name, (adapter, _) in self._served.items() if name not in present]
            for name, _ in gone:
                del self._served[name]
        for name, adapter in gone:  # rotated checkpoints; requests already running keep their weights
            self.state.engine.call(lambda a=adapter: self.state.registry.remove(a)).result(timeout=600)

    def _load(self, row: dict[str, Any], *, strict: bool = False) -> None:
        """Hot-load one model (a job's, or a checkpoint's) under an engine name of its own."""
        adapter = f"ft-{row['job_id']}" + (f"-{row['step']}" if row["step"] is not None else "")
        with self._load_lock:
            try:
                if self.state.registry.get(adapter) is None:
                    prepared = self.state.prepare(adapter, Path(row["adapter_dir"]))
                    self.state.engine.call(lambda: self.state.registry.add(prepared)).result(timeout=600)
            except Exception as exc:
                if strict:
                    raise
                self._failed.add(row["model"])  # a model whose files went missing must not stop the server
                log.error("cannot serve %s: %s", row["model"], exc)
                return
            with self._served_lock:
                self._served[row["model"]] = (adapter, row["project"])

    def _load_on_request(self, name: str, project: Optional[str]) -> None:
        if not name.startswith("ft:") or project is None:
            return
        for row in self.store.servable_models():
            if row["model"] == name and row["project"] == project:
                self._load(row)

    def _serve_finished(self, job: dict[str, Any]) -> None:
        """Before the server's own worker marks a job succeeded: load its model and checkpoints."""
        self._load({"model": job["fine_tuned_model"], "project": job["project"], "job_id": job["id"], "step": None,
                    "adapter_dir": str(Path(job["run_dir"]) / "train" / "adapter")}, strict=True)
        for checkpoint in self.store.checkpoints(job["id"], limit=1000):
            if checkpoint["adapter_dir"]:
                self._load({"model": checkpoint["model"], "project": job["project"], "job_id": job["id"],
                            "step": checkpoint["step"], "adapter_dir": checkpoint["adapter_dir"]})
