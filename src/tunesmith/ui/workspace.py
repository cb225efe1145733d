"""What the UI reads from a workspace directory: stage directories, their records and reports.

Stages talk through directories (see DESIGN.md), so the UI needs no database for runs: a
directory is a training run when it holds `metrics.jsonl`, `adapter/`, `model/` or a train
manifest; an evaluation when it holds `metrics.json`; a prepared dataset, a merge or an export
when its `manifest.json` says so. Every path a request names is resolved and must stay under the
workspace root; symlinks that point outside it are refused like `..`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from tunesmith.errors import TunesmithError

# Directories never searched for runs: checkpoints and weights inside a run, caches, VCS data.
SKIPPED_DIRS = frozenset({"checkpoints", "adapter", "model", "tensorboard", "node_modules", "__pycache__", "wandb",
                          "mlruns"})
MAX_DEPTH = 4
MAX_DIRS = 5000
# A run whose metrics.jsonl changed within this many seconds, with no final manifest yet, is
# reported as running; older ones as incomplete (stopped, crashed, or waiting to be resumed).
RUNNING_WINDOW_S = 120
MAX_METRICS_CHUNK = 4 << 20
MAX_SAMPLES = 50
READABLE_SUFFIXES = {".png": "image/png", ".md": "text/markdown; charset=utf-8", ".json": "application/json",
                     ".jsonl": "application/x-ndjson", ".yaml": "text/plain; charset=utf-8",
                     ".txt": "text/plain; charset=utf-8", ".html": "text/plain; charset=utf-8"}
MAX_FILE_BYTES = 16 << 20


class WorkspaceError(TunesmithError):
    """A path outside the workspace, or a directory that is not what the request expects."""

    def __init__(self, message: str, *, status: int = 400, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.status = status


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def open(cls, root: str | Path) -> "Workspace":
        path = Path(root).expanduser().resolve()
        if not path.is_dir():
            raise WorkspaceError(f"the workspace {root} is not a directory", hint="pass --workspace DIR")
        return cls(path)

    # ------------------------------------------------------------------ confinement

    def resolve(self, relative: str) -> Path:
        """The path `relative` names inside the root; an error for anything that leaves it."""
        if relative is None or "\x00" in relative:
            raise WorkspaceError("invalid path")
        candidate = Path(relative)
        if candidate.is_absolute() or ".." in candidate.parts:
            raise WorkspaceError(f"the path {relative!r} leaves the workspace", status=403)
        resolved = (self.root / candidate).resolve()
        if resolved != self.root and not resolved.is_relative_to(self.root):
            raise WorkspaceError(f"the path {relative!r} leaves the workspace", status=403)
        return resolved

    def relative(self, path: Path) -> str:
        rel = path.relative_to(self.root).as_posix()
        return "." if rel == "" else rel

    def stage_dir(self, relative: str) -> Path:
        path = self.resolve(relative)
        if not path.is_dir() or classify(path) is None:
            raise WorkspaceError(f"no run, evaluation or dataset at {relative!r}", status=404)
        return path

    def read_file(self, relative: str) -> tuple[bytes, str]:
        """A report file (PNG, Markdown, JSON, YAML) of a stage directory, with its media type."""
        path = self.resolve(relative)
        media = READABLE_SUFFIXES.get(path.suffix.lower())
        if media is None:
            raise WorkspaceError(f"the UI shows only {', '.join(sorted(READABLE_SUFFIXES))} files", status=403)
        if not path.is_file():
            raise WorkspaceError(f"no file {relative!r}", status=404)
        if path.stat().st_size > MAX_FILE_BYTES:
            raise WorkspaceError(f"{relative} is larger than {MAX_FILE_BYTES >> 20} MiB", status=413)
        return path.read_bytes(), media

    # ------------------------------------------------------------------ discovery

    def stage_dirs(self) -> Iterator[Path]:
        seen = 0
        for current, dirs, _files in os.walk(self.root, followlinks=False):
            path = Path(current)
            depth = len(path.relative_to(self.root).parts)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS)
            if depth >= MAX_DEPTH:
                dirs.clear()
            seen += 1
            if seen > MAX_DIRS:
                return
            if classify(path) is not None:
                yield path

    def list_runs(self) -> list[dict[str, Any]]:
        rows = [summary(self, path) for path in self.stage_dirs()]
        return sorted(rows, key=lambda r: (-(r.get("updated") or 0), r["id"]))


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def classify(path: Path) -> Optional[str]:
    """"train", "eval", "data", another manifest's stage, or None for a directory of no stage."""
    manifest = _read_json(path / "manifest.json") if (path / "manifest.json").is_file() else None
    stage = (manifest or {}).get("stage")
    if (path / "metrics.json").is_file() or stage == "eval":
        return "eval"
    if stage == "train" or (path / "metrics.jsonl").is_file() or (path / "adapter").is_dir():
        return "train"
    if stage == "data prepare":
        return "data"
    if isinstance(stage, str):
        return stage
    return None


def read_metrics_chunk(path: Path, offset: int) -> dict[str, Any]:
    """metrics.jsonl records from byte `offset` to the last complete line, for polling while a run
    writes the file. A file shorter than `offset` was restarted: the reply says so and starts over."""
    size = path.stat().st_size if path.is_file() else 0
    reset = offset > size
    if reset or offset < 0:
        offset = 0
    records: list[dict[str, Any]] = []
    if size > offset:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(MAX_METRICS_CHUNK)
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next poll
        for line in data[:end].splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        offset += end
    return {"records": records, "offset": offset, "reset": reset, "size": size}


def _train_status(path: Path, manifest: Optional[dict[str, Any]]) -> dict[str, Any]:
    metrics = path / "metrics.jsonl"
    last: dict[str, Any] = {}
    diverged = None
    if metrics.is_file():
        chunk = read_metrics_chunk(metrics, max(0, metrics.stat().st_size - 65536))
        for record in chunk["records"]:
            if "nonfinite" in record:
                diverged = record
            if "loss" in record:
                last = record
    updated = max((p.stat().st_mtime for p in (metrics, path / "manifest.json") if p.is_file()), default=None)
    if diverged is not None:
        status = "diverged"
    elif manifest is not None and "steps" in manifest:
        status = "finished"
    elif updated is not None and time.time() - updated < RUNNING_WINDOW_S:
        status = "running"
    else:
        status = "incomplete"
    return {"status": status, "updated": updated, "step": last.get("step"), "loss": last.get("loss"),
            "method": (manifest or {}).get("method")}


def summary(ws: Workspace, path: Path) -> dict[str, Any]:
    kind = classify(path) or "other"
    manifest = _read_json(path / "manifest.json")
    row: dict[str, Any] = {"id": ws.relative(path), "kind": kind, "stage": (manifest or {}).get("stage"),
                           "created": (manifest or {}).get("created_unix")}
    if kind == "train":
        row.update(_train_status(path, manifest))
    else:
        row["status"] = "finished" if manifest is not None else "incomplete"
        row["updated"] = (path / "manifest.json").stat().st_mtime if manifest is not None else None
    if kind == "eval":
        metrics = _read_json(path / "metrics.json") or {}
        row["model"] = metrics.get("model")
        row["examples"] = metrics.get("examples")
    if kind == "data":
        counts = (manifest or {}).get("counts", {})
        row["kept"] = counts.get("kept")
        row["read"] = counts.get("read")
        row["format"] = counts.get("kind")
    return row


def detail(ws: Workspace, path: Path) -> dict[str, Any]:
    """Everything the run page shows: summary, config, manifest, reports and the manifest chain."""
    info = summary(ws, path)
    config = path / "config.yaml"
    info["config"] = config.read_text(encoding="utf-8", errors="replace") if config.is_file() else None
    info["manifest"] = _read_json(path / "manifest.json")
    info["files"] = sorted(ws.relative(p) for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in READABLE_SUFFIXES)
    if info["kind"] == "eval":
        info["metrics"] = _read_json(path / "metrics.json")
        info["samples"] = _samples(path / "samples.jsonl")
    if info["kind"] == "data" and (path / "report.md").is_file():
        info["report"] = (path / "report.md").read_text(encoding="utf-8", errors="replace")
    info["chain"] = manifest_chain(ws, path)
    return info


def _samples(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if not path.is_file():
        return rows
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if len(rows) >= MAX_SAMPLES:
                break
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


# --------------------------------------------------------------------------- manifest chain


def _stage_dir_of(ws: Workspace, recorded: str, origin: Path) -> Optional[Path]:
    """The stage directory holding a recorded input path (a file, an adapter dir or a run dir)."""
    if not recorded:
        return None
    given = Path(recorded)
    for base in ([given] if given.is_absolute() else [ws.root / given, origin / given]):
        try:
            candidate = base.resolve()
        except (OSError, RuntimeError):
            continue
        if not candidate.is_relative_to(ws.root):
            continue
        for up in [candidate, *candidate.parents][:4]:
            if not up.is_relative_to(ws.root) or up == ws.root:
                break
            if up.is_dir() and (up / "manifest.json").is_file():
                return up
    return None


def _recorded_inputs(manifest: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for entries in (manifest.get("inputs") or {}).values() if isinstance(manifest.get("inputs"), dict) else []:
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("path"), str):
                found.append(entry["path"])
    for key in ("adapter", "run_dir", "model", "source"):
        if isinstance(manifest.get(key), str):
            found.append(manifest[key])
    return found


def manifest_chain(ws: Workspace, path: Path, *, limit: int = 12) -> list[dict[str, Any]]:
    """This directory and the stage directories it was made from, newest first: eval -> run ->
    prepared data, export -> merge -> run... The base model closes the chain when recorded."""
    chain: list[dict[str, Any]] = []
    seen: set[Path] = set()
    queue = [path]
    while queue and len(chain) < limit:
        current = queue.pop(0)
        if current in seen:
            continue
        seen.add(current)
        manifest = _read_json(current / "manifest.json") or {}
        base = manifest.get("base_model")
        node = {"id": ws.relative(current), "stage": manifest.get("stage") or classify(current),
                "created": manifest.get("created_unix"),
                "base_model": base.get("path") if isinstance(base, dict) else base, "inputs": []}
        for recorded in _recorded_inputs(manifest):
            parent = _stage_dir_of(ws, recorded, current)
            if parent is not None and parent != current:
                rel = ws.relative(parent)
                if rel not in node["inputs"]:
                    node["inputs"].append(rel)
                queue.append(parent)
        chain.append(node)
    return chain
