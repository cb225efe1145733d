"""The record every stage writes next to its outputs: `config.yaml` and `manifest.json`.

The manifest lists the stage's inputs with content hashes, the library versions, the seed, the
git revision of the user's working directory when there is one, and the output files with their
hashes. Stages read earlier stages' manifests, which is what makes a model reproducible.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel

from tunesmith import __version__
from tunesmith.config import save_config

LIBRARIES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "tokenizers",
             "safetensors", "bitsandbytes", "gguf")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "tunesmith": __version__}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_revision(cwd: str | Path = ".") -> str | None:
    """The commit of the git work tree around `cwd` (with `-dirty` if modified), if any."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write through a temporary file and rename, so readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def describe_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """Hash every input file (directories: each file under them, recursively, in sorted order).

    An input given as a mapping is an entry the stage already described (path, sha256 and what
    it counted in the file); it is recorded as it is."""
    described: dict[str, Any] = {}
    for role, value in inputs.items():
        paths = [value] if isinstance(value, (str, Path)) else list(value)
        entries = []
        for p in paths:
            if isinstance(p, dict):
                entries.append(p)
                continue
            p = Path(p)
            files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
            for f in files:
                if f.is_file():
                    entries.append({"path": str(f), "sha256": sha256_file(f), "bytes": f.stat().st_size})
                else:
                    entries.append({"path": str(f), "ref": True})  # a hub id or other non-file reference
        described[role] = entries
    return described


def write_stage_record(
    out_dir: str | Path,
    stage: str,
    cfg: BaseModel,
    *,
    inputs: dict[str, Any] | None = None,
    outputs: Iterable[str | Path] = (),
    seed: int | None = None,
    extra: dict[str, Any] | None = None,
    timestamp: bool = True,
) -> Path:
    """Write `config.yaml` and `manifest.json` into `out_dir`; return the manifest path.

    `timestamp=False` leaves out the creation time and git revision, for stages that promise
    byte-identical outputs for identical inputs.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    manifest: dict[str, Any] = {
        "stage": stage,
        "created_unix": int(time.time()) if timestamp else None,
        "tunesmith_version": __version__,
        "libraries": library_versions(),
        "git_revision": git_revision() if timestamp else None,
        "seed": seed,
        "inputs": describe_inputs(inputs or {}),
        "outputs": [
            {"path": str(Path(p).relative_to(out) if Path(p).is_relative_to(out) else p),
             "sha256": sha256_file(p), "bytes": Path(p).stat().st_size}
            for p in sorted(map(Path, outputs)) if Path(p).is_file()
        ],
    }
    if extra:
        manifest.update(extra)
    path = out / "manifest.json"
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path
