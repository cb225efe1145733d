"""`JobsService`: the jobs side of one server — tenancy, the stores, the supervisor, and the
fine-tuned models it serves through the adapter hot-load path.

API keys belong to projects. The server's own key (or no key at all, when the server has none)
is the project `default`; `jobs.projects` adds tenants with their own keys. Every lookup is by
(project, id), so another project's file, job or model is simply not found (404, never 403).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from tunesmith.jobs import artifacts
from tunesmith.jobs.config import BaseModelEntry, JobsConfig
from tunesmith.jobs.store import JobStore, new_id
from tunesmith.jobs.worker import Supervisor, artifacts_checkpoints
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
        self.supervisor = Supervisor(self)
        self._keys: list[tuple[bytes, str]] = [
            (key.get_secret_value().encode("utf-8"), name)
            for name, project in cfg.projects.items() for key in project.api_keys]
        self._served: dict[str, tuple[str, str]] = {}  # model name -> (adapter name in the engine, project)
        self._served_lock = threading.Lock()
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
        for job in self.store.jobs_in("succeeded"):
            try:
                self._serve(job)
            except Exception as exc:  # a model whose files went missing must not stop the server
                log.error("cannot serve %s: %s", job["fine_tuned_model"], exc)
        self.supervisor.start()

    def stop(self) -> None:
        self.supervisor.stop()

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

    def _serve(self, job: dict[str, Any]) -> None:
        """Hot-load the job's model and its servable checkpoints into the running engine."""
        run = Path(job["run_dir"])
        models = [(job["fine_tuned_model"], f"ft-{job['id']}", run / "train" / "adapter")]
        for checkpoint in self.store.checkpoints(job["id"], limit=1000):
            if checkpoint["adapter_dir"]:
                models.append((checkpoint["model"], f"ft-{job['id']}-{checkpoint['step']}",
                               Path(checkpoint["adapter_dir"])))
        for name, adapter, path in models:
            if self.state.registry.get(adapter) is None:
                prepared = self.state.prepare(adapter, path)
                self.state.engine.call(lambda p=prepared: self.state.registry.add(p)).result(timeout=600)
            with self._served_lock:
                self._served[name] = (adapter, job["project"])

    # ------------------------------------------------------------------ finishing a job

    def add_file(self, project: str, filename: str, content: bytes, purpose: str) -> dict[str, Any]:
        file_id = new_id("file")
        path = self.store.files_dir / file_id
        path.write_bytes(content)
        return self.store.add_file(file_id=file_id, project=project, filename=filename, size=len(content),
                                   purpose=purpose, path=path, sha256=hashlib.sha256(content).hexdigest())

    def finish(self, job: dict[str, Any], records: list[dict[str, Any]]) -> None:
        """A training process exited 0: results file, servable checkpoints, registry, hot-load,
        and only then `succeeded`, so the model answers as soon as the job says it exists."""
        import json

        run = Path(job["run_dir"])
        out = run / "train"
        manifest = json.loads((out / "manifest.json").read_text())
        model = artifacts.model_name(job["model"], job["organization_id"], job["suffix"], job["id"])
        kept = {int(p.name.removeprefix(artifacts.CHECKPOINT_PREFIX)): p for p in artifacts_checkpoints(out)}
        for checkpoint in self.store.checkpoints(job["id"], limit=1000):
            source = kept.get(checkpoint["step"])
            target = run / "checkpoints" / f"step-{checkpoint['step']}"
            if source is not None and artifacts.export_checkpoint(source, out / "adapter", target):
                self.store.set_checkpoint_adapter(job["id"], checkpoint["step"], str(target))
            else:  # rotated away by keep_checkpoints, as OpenAI keeps only the last ones
                self.store.delete_checkpoint(job["id"], checkpoint["step"])
        all_records, _ = artifacts.read_metrics(out / "metrics.jsonl")
        results = self.add_file(job["project"], "step_metrics.csv", artifacts.results_csv(all_records),
                                "fine-tune-results")
        finished = {**job, "fine_tuned_model": model}
        try:
            self._serve(finished)
        except Exception as exc:
            self.supervisor.fail(job, "model_load_failed", None, f"The fine-tuned model could not be loaded: {exc}")
            return
        if self.cfg.register_models:
            self._register(finished, out)
        if self.store.update_job(job["id"], only_if_status=("running",), status="succeeded", fine_tuned_model=model,
                                 trained_tokens=manifest.get("trained_tokens"), result_files=[results["id"]],
                                 finished_at=int(time.time()), estimated_finish=None, pid=None):
            self.store.add_event(job["id"], f"New fine-tuned model created: {model}")
            self.store.add_event(job["id"], "The job has successfully completed")

    def _register(self, job: dict[str, Any], out: Path) -> None:
        from tunesmith.registry.lineage import version_fields
        from tunesmith.registry.store import Registry

        fields = version_fields(out)
        for role in ("training", "validation"):
            record = self.store.file(job[f"{role}_file"], job["project"]) if job[f"{role}_file"] else None
            fields[f"{role}_file_sha256"] = record["sha256"] if record else None
        fields["hyperparameters"] = {**fields["hyperparameters"], "method": job["method"]}
        registry = Registry(self.cfg.registry_path)
        try:
            registry.add(job["fine_tuned_model"], source=f"job:{job['id']}", project=job["project"], **fields)
        finally:
            registry.close()
