"""Finishing a job whose training exited 0: servable checkpoints, the results file, the registry,
and only then `succeeded`, so everything the job object names exists when a client reads it."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.jobs import artifacts

if TYPE_CHECKING:
    from tunesmith.jobs.worker import Supervisor


def finish(worker: "Supervisor", job: dict[str, Any]) -> None:
    store = worker.store
    run = Path(job["run_dir"])
    out = run / "train"
    manifest = json.loads((out / "manifest.json").read_text())
    model = artifacts.model_name(job["model"], job["organization_id"], job["suffix"], job["id"])
    kept = {int(p.name.removeprefix(artifacts.CHECKPOINT_PREFIX)): p for p in artifacts.complete_checkpoints(out)}
    for checkpoint in store.checkpoints(job["id"], limit=1000):
        source = kept.get(checkpoint["step"])
        target = run / "checkpoints" / f"step-{checkpoint['step']}"
        if source is None:  # rotated away by keep_checkpoints, as OpenAI keeps only the last ones
            store.delete_checkpoint(job["id"], checkpoint["step"])
            shutil.rmtree(target, ignore_errors=True)
        elif not checkpoint["adapter_dir"]:  # a run without an adapter layout: export from the final adapter
            if artifacts.export_checkpoint(source, out / "adapter", target):
                store.set_checkpoint_adapter(job["id"], checkpoint["step"], str(target))
            else:
                store.delete_checkpoint(job["id"], checkpoint["step"])
    all_records, _ = artifacts.read_metrics(out / "metrics.jsonl")
    results = store.write_file(job["project"], "step_metrics.csv", artifacts.results_csv(all_records),
                               "fine-tune-results")
    finished = {**job, "fine_tuned_model": model}
    if worker.before_success is not None:
        try:
            worker.before_success(finished)
        except Exception as exc:
            worker.fail(job, "model_load_failed", None, f"The fine-tuned model could not be loaded: {exc}")
            return
    if worker.cfg.register_models:
        _register(store, worker.cfg.registry_path, finished, out)
    if store.update_job(job["id"], only_if_status=("running",), status="succeeded", fine_tuned_model=model,
                        trained_tokens=manifest.get("trained_tokens"), result_files=[results["id"]],
                        finished_at=int(time.time()), estimated_finish=None, pid=None, worker=None,
                        lease_until=None):
        store.add_event(job["id"], f"New fine-tuned model created: {model}")
        store.add_event(job["id"], "The job has successfully completed")


def _register(store, registry_path: Path, job: dict[str, Any], out: Path) -> None:
    from tunesmith.registry.lineage import version_fields
    from tunesmith.registry.store import Registry

    fields = version_fields(out)
    for role in ("training", "validation"):
        record = store.file(job[f"{role}_file"], job["project"]) if job[f"{role}_file"] else None
        fields[f"{role}_file_sha256"] = record["sha256"] if record else None
    fields["hyperparameters"] = {**fields["hyperparameters"], "method": job["method"]}
    registry = Registry(registry_path)
    try:
        registry.add(job["fine_tuned_model"], source=f"job:{job['id']}", project=job["project"], **fields)
    finally:
        registry.close()
