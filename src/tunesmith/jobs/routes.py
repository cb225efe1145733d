"""The files and fine-tuning jobs routes, shaped as OpenAI's (the `openai` SDK's types field for
field). Included by `tunesmith.serve.app` when the server has a `jobs:` section."""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from tunesmith.jobs import spec
from tunesmith.jobs.service import JobsService
from tunesmith.jobs.store import ACTIVE, new_id
from tunesmith.jobs.validation import FileProblem, check_upload
from tunesmith.serve.auth import unauthorized
from tunesmith.serve.protocol import APIError, bad_request
from tunesmith.serve.routes import read_json

router = APIRouter()
MAX_SUFFIX = 64
MAX_METADATA = 16


def _service(request: Request) -> tuple[JobsService, str]:
    service: Optional[JobsService] = request.app.state.serve.jobs
    project = request.scope.get("state", {}).get("project")
    if project is None:
        raise unauthorized()
    return service, project


def _limit(value: Optional[str], default: int, most: int) -> int:
    if value is None:
        return default
    if not value.isdigit() or not 1 <= int(value) <= most:
        raise bad_request(f"limit must be an integer from 1 to {most}.", param="limit")
    return int(value)


def _page(items: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    shown = items[:limit]
    return {"object": "list", "data": shown, "has_more": len(items) > limit,
            "first_id": shown[0]["id"] if shown else None, "last_id": shown[-1]["id"] if shown else None}


# --------------------------------------------------------------------------- files


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": row["created_at"],
            "filename": row["filename"], "purpose": row["purpose"], "status": row["status"],
            "status_details": row["status_details"], "expires_at": None}


def _file_not_found(file_id: str) -> APIError:
    return APIError(404, f"No such File object: {file_id}", param="id", code="file_not_found")


@router.post("/v1/files")
async def upload_file(request: Request) -> dict[str, Any]:
    service, project = _service(request)
    if request.headers.get("content-length") is None:
        raise APIError(411, "Uploads need a Content-Length header.", code="length_required")
    form = await request.form(max_files=1, max_fields=8)
    purpose, upload = form.get("purpose"), form.get("file")
    if purpose != "fine-tune":
        raise bad_request(f"This server stores files for fine-tuning only: purpose must be 'fine-tune', not "
                          f"{purpose!r}.", param="purpose")
    if upload is None or isinstance(upload, str):
        raise bad_request("Send the file as the multipart field `file`.", param="file")
    filename = Path(upload.filename or "upload.jsonl").name
    file_id = new_id("file")
    path = service.store.files_dir / file_id  # a generated name: the client's name is only recorded
    digest, size = hashlib.sha256(), 0
    with tempfile.NamedTemporaryFile(dir=service.store.files_dir, prefix=".upload-", delete=False) as tmp:
        while chunk := await upload.read(1 << 20):
            size += len(chunk)
            if size > service.cfg.max_upload_bytes:
                Path(tmp.name).unlink(missing_ok=True)
                raise APIError(413, f"The file is larger than {service.cfg.max_upload_bytes} bytes.", param="file",
                               code="file_too_large")
            digest.update(chunk)
            tmp.write(chunk)
    try:  # a large file takes a while to check: off the event loop, so other requests go on
        await asyncio.get_running_loop().run_in_executor(None, check_upload, Path(tmp.name), filename)
    except FileProblem as problem:
        Path(tmp.name).unlink(missing_ok=True)
        raise bad_request(f"Invalid file format for Fine-Tuning API. Must be .jsonl. {problem}", param="file",
                          code="invalid_file_format") from None
    Path(tmp.name).rename(path)
    row = service.store.add_file(file_id=file_id, project=project, filename=filename, size=size, purpose=purpose,
                                 path=path, sha256=digest.hexdigest())
    return file_object(row)


@router.get("/v1/files")
async def list_files(request: Request) -> dict[str, Any]:
    service, project = _service(request)
    query = request.query_params
    limit = _limit(query.get("limit"), 10000, 10000)
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise bad_request("order must be asc or desc.", param="order")
    rows = service.store.files(project, purpose=query.get("purpose"), after=query.get("after"), limit=limit + 1,
                               newest_first=order == "desc")
    return _page([file_object(r) for r in rows], limit)


def _file(request: Request, file_id: str) -> tuple[JobsService, dict[str, Any]]:
    service, project = _service(request)
    row = service.store.file(file_id, project)
    if row is None:
        raise _file_not_found(file_id)
    return service, row


@router.get("/v1/files/{file_id}")
async def get_file(request: Request, file_id: str) -> dict[str, Any]:
    return file_object(_file(request, file_id)[1])


@router.get("/v1/files/{file_id}/content")
async def file_content(request: Request, file_id: str) -> FileResponse:
    _, row = _file(request, file_id)
    return FileResponse(row["path"], media_type="application/octet-stream", filename=row["filename"])


@router.delete("/v1/files/{file_id}")
async def delete_file(request: Request, file_id: str) -> dict[str, Any]:
    service, row = _file(request, file_id)
    service.store.delete_file(file_id)
    Path(row["path"]).unlink(missing_ok=True)
    return {"id": file_id, "object": "file", "deleted": True}


# --------------------------------------------------------------------------- jobs


def job_object(job: dict[str, Any]) -> dict[str, Any]:
    method = job["method"]
    hyper = method[method["type"]]["hyperparameters"]
    return {
        "id": job["id"], "object": "fine_tuning.job", "created_at": job["created_at"], "error": job["error"],
        "fine_tuned_model": job["fine_tuned_model"], "finished_at": job["finished_at"],
        "hyperparameters": {k: hyper[k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier")},
        "model": job["model"], "organization_id": job["organization_id"], "result_files": job["result_files"],
        "seed": job["seed"], "status": job["status"], "trained_tokens": job["trained_tokens"],
        "training_file": job["training_file"], "validation_file": job["validation_file"],
        "estimated_finish": job["estimated_finish"], "integrations": [], "metadata": job["metadata"],
        "method": method, "suffix": job["suffix"],
    }


def _job_not_found(job_id: str) -> APIError:
    return APIError(404, f"No fine-tuning job found with id {job_id}.", param="fine_tuning_job_id",
                    code="fine_tuning_job_not_found")


def _own_file(service: JobsService, project: str, file_id: Any, param: str) -> str:
    if not isinstance(file_id, str) or service.store.file(file_id, project) is None:
        raise bad_request(f"invalid {param}: {file_id}", param=param, code="invalid_file")
    if service.store.file(file_id, project)["purpose"] != "fine-tune":
        raise bad_request(f"{file_id} has purpose {service.store.file(file_id, project)['purpose']!r}, not "
                          "'fine-tune'.", param=param, code="invalid_file")
    return file_id


def _check_options(body: dict[str, Any]) -> tuple[Optional[str], Optional[dict[str, str]], int]:
    suffix = body.get("suffix")
    if suffix is not None and (not isinstance(suffix, str) or not 1 <= len(suffix) <= MAX_SUFFIX
                               or ":" in suffix or not suffix.isprintable()):
        raise bad_request(f"suffix must be 1 to {MAX_SUFFIX} printable characters without ':'.", param="suffix")
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > MAX_METADATA or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in metadata.items())):
        raise bad_request(f"metadata must map at most {MAX_METADATA} keys (64 characters) to strings "
                          "(512 characters).", param="metadata")
    seed = body.get("seed")
    if seed is None:
        seed = int(time.time()) % 2**31
    elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise bad_request("seed must be an integer from 0 to 2147483647.", param="seed")
    if body.get("integrations"):
        raise bad_request("Integrations (wandb) are not offered by this server; use `report_to` in a train config.",
                          param="integrations", code="unsupported_integration")
    return suffix, metadata, seed


@router.post("/v1/fine_tuning/jobs")
async def create_job(request: Request) -> dict[str, Any]:
    service, project = _service(request)
    body = await read_json(request)
    model = body.get("model")
    if model not in service.base_names():
        raise bad_request(f"Model {model} is not available for fine-tuning or does not exist. Fine-tunable: "
                          f"{', '.join(service.base_names())}.", param="model", code="model_not_available")
    training = _own_file(service, project, body.get("training_file"), "training_file")
    validation = body.get("validation_file")
    if validation is not None:
        validation = _own_file(service, project, validation, "validation_file")
    method = spec.parse_method(body)
    suffix, metadata, seed = _check_options(body)
    job_id = new_id("ftjob")
    job = {"id": job_id, "project": project, "organization_id": service.organization(project),
           "created_at": int(time.time()), "model": model, "training_file": training, "validation_file": validation,
           "status": "validating_files", "method": method, "seed": seed, "suffix": suffix, "metadata": metadata,
           "run_dir": str(service.store.runs_dir / job_id), "settings": service.job_settings(model)}
    with service.store.db.transaction() as conn:  # the cap and the insert in one transaction
        queued = conn.execute("SELECT COUNT(*) FROM jobs WHERE project = ? AND status IN ('validating_files', "
                              "'queued')", (project,)).fetchone()[0]
        if queued >= service.queued_limit(project):
            raise APIError(429, f"This project already has {queued} queued jobs, the most it may have; wait for "
                           "some to start.", type="rate_limit_error", code="rate_limit_exceeded")
        service.store.add_job(job)
    service.store.add_event(job_id, f"Created fine-tuning job: {job_id}")
    return job_object(service.store.job(job_id))


def _job(request: Request, job_id: str) -> tuple[JobsService, dict[str, Any]]:
    service, project = _service(request)
    job = service.store.job(job_id, project)
    if job is None:
        raise _job_not_found(job_id)
    return service, job


@router.get("/v1/fine_tuning/jobs")
async def list_jobs(request: Request) -> dict[str, Any]:
    service, project = _service(request)
    query = request.query_params
    limit = _limit(query.get("limit"), 20, 100)
    metadata = {key[len("metadata["):-1]: value for key, value in query.items()
                if key.startswith("metadata[") and key.endswith("]")}
    jobs = service.store.jobs(project, after=query.get("after"), limit=limit + 1, metadata=metadata)
    page = _page([job_object(j) for j in jobs], limit)
    return {"object": "list", "data": page["data"], "has_more": page["has_more"]}


@router.get("/v1/fine_tuning/jobs/{job_id}")
async def get_job(request: Request, job_id: str) -> dict[str, Any]:
    return job_object(_job(request, job_id)[1])


def _transition(request: Request, job_id: str, action: str) -> dict[str, Any]:
    """cancel: any unfinished job; pause: a queued or running one; resume: a paused one."""
    service, job = _job(request, job_id)
    allowed = {"cancel": (*ACTIVE, "paused"), "pause": ("queued", "running"),
               "resume": ("paused",)}[action]
    if job["status"] not in allowed:
        raise bad_request(f"Cannot {action} a job that is {job['status']}.", param="fine_tuning_job_id",
                          code="invalid_job_state")
    if action == "resume":
        changed = service.store.update_job(job_id, only_if_status=allowed, status="queued")
        message = "Fine-tuning job resumed; queued to continue from its last checkpoint"
    else:
        status = "cancelled" if action == "cancel" else "paused"
        extra = {"finished_at": int(time.time())} if action == "cancel" else {}
        extra["estimated_finish"] = None
        stop = action if job["status"] == "running" else None
        changed = service.store.update_job(job_id, only_if_status=allowed, status=status, stop_request=stop, **extra)
        message = f"Fine-tuning job {status}" if stop is None else f"Fine-tuning job {status}; stopping training"
    if not changed:  # the supervisor moved the job in between; tell the client what it is now
        raise bad_request(f"Cannot {action} the job now; it is {service.store.job(job_id)['status']}.",
                          param="fine_tuning_job_id", code="invalid_job_state")
    service.store.add_event(job_id, message)
    return job_object(service.store.job(job_id))


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
async def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
    return _transition(request, job_id, "cancel")


@router.post("/v1/fine_tuning/jobs/{job_id}/pause")
async def pause_job(request: Request, job_id: str) -> dict[str, Any]:
    return _transition(request, job_id, "pause")


@router.post("/v1/fine_tuning/jobs/{job_id}/resume")
async def resume_job(request: Request, job_id: str) -> dict[str, Any]:
    return _transition(request, job_id, "resume")


@router.get("/v1/fine_tuning/jobs/{job_id}/events")
async def job_events(request: Request, job_id: str) -> dict[str, Any]:
    service, job = _job(request, job_id)
    limit = _limit(request.query_params.get("limit"), 20, 1000)
    events = service.store.events(job_id, after=request.query_params.get("after"), limit=limit + 1)
    data = [{"id": e["id"], "object": "fine_tuning.job.event", "created_at": e["created_at"], "level": e["level"],
             "message": e["message"], "data": e["data"] or {}, "type": e["type"]} for e in events]
    page = _page(data, limit)
    return {"object": "list", "data": page["data"], "has_more": page["has_more"]}


@router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
async def job_checkpoints(request: Request, job_id: str) -> dict[str, Any]:
    service, job = _job(request, job_id)
    limit = _limit(request.query_params.get("limit"), 10, 100)
    rows = service.store.checkpoints(job_id, after=request.query_params.get("after"), limit=limit + 1)
    data = [{"id": c["id"], "object": "fine_tuning.job.checkpoint", "created_at": c["created_at"],
             "fine_tuned_model_checkpoint": c["model"], "fine_tuning_job_id": job_id, "metrics": c["metrics"],
             "step_number": c["step"]} for c in rows]
    return _page(data, limit)
