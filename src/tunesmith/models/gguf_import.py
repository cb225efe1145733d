"""GGUF bases: dequantise a `.gguf` file into a Hugging Face model directory every stage can load.

    tunesmith models import SmolLM2-135M-Instruct.Q4_1.gguf --out models/smollm2
    model: ~/models/SmolLM2-135M-Instruct.Q4_1.gguf      # in any stage config: imported once, cached

transformers reads GGUF files (`from_pretrained(dir, gguf_file=...)`) and dequantises every tensor
to floating point, but the model it returns is marked "quantised with gguf" and `save_pretrained`
refuses it, so the weights are copied into a plain model built from the same config and saved as
safetensors, with the tokenizer and chat template the GGUF carries. The directory is keyed by the
file's SHA-256 (the same bytes always map to the same directory) and holds `manifest.json`
recording the source file, its hash and its quantisation, so a run trained on it says which
4-bit file its base came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tunesmith.errors import ModelError

if TYPE_CHECKING:
    from tunesmith.models.config import ImportConfig

MANIFEST = "manifest.json"
STAGE = "gguf-import"
_DTYPES = ("fp32", "bf16", "fp16")


def cache_root() -> Path:
    """Where imported GGUF bases live: $TUNESMITH_CACHE/gguf, else ~/.cache/tunesmith/gguf."""
    root = os.environ.get("TUNESMITH_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "tunesmith"
    return base / "gguf"


def is_gguf_path(path: str | Path) -> bool:
    return str(path).lower().endswith(".gguf")


@dataclass
class ImportedGGUF:
    directory: Path
    sha256: str
    quantization: str
    reused: bool

    def summary(self) -> str:
        """The directory alone, so `$(tunesmith models import FILE.gguf)` is the path to pass on."""
        return str(self.directory)

    def describe(self) -> str:
        state = "already imported" if self.reused else "imported"
        return f"{state}: {self.directory} ({self.quantization} source, sha256 {self.sha256[:16]}…)"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stamped_sha256(path: Path) -> str:
    """The file's SHA-256, remembered per (path, size, mtime) so that resolving the same multi-GB
    file again in every stage does not re-read it; a changed file is hashed anew."""
    index_path = cache_root() / "hashes.json"
    stat = path.stat()
    key = str(path.resolve())
    stamp = [stat.st_size, stat.st_mtime_ns]
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        index = {}
    entry = index.get(key) if isinstance(index, dict) else None
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    sha = file_sha256(path)
    index = index if isinstance(index, dict) else {}
    index[key] = {"stamp": stamp, "sha256": sha}
    try:
        index_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = index_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(index, indent=1), encoding="utf-8")
        tmp.replace(index_path)
    except OSError:
        pass  # an unwritable cache only costs a re-hash next time
    return sha


def describe_quantization(path: Path) -> dict[str, Any]:
    """The file type the GGUF declares and how many tensors are stored in each ggml type."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError, IndexError) as exc:
        raise ModelError(f"{path} is not a readable GGUF file: {exc}",
                         hint="check that the download is complete (compare its SHA-256 with the publisher's)") from None
    field = reader.fields.get("general.file_type")
    file_type = None
    if field is not None:
        value = int(field.parts[field.data[0]][0])
        try:
            file_type = gguf.LlamaFileType(value).name.removeprefix("MOSTLY_")
        except ValueError:
            file_type = str(value)
    arch_field = reader.fields.get("general.architecture")
    architecture = bytes(arch_field.parts[arch_field.data[0]]).decode() if arch_field is not None else None
    types = Counter(gguf.GGMLQuantizationType(t.tensor_type).name for t in reader.tensors)
    return {"file_type": file_type or (types.most_common(1)[0][0] if types else "unknown"),
            "tensor_types": dict(sorted(types.items())), "architecture": architecture}


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("stage") == STAGE else None


def _dequantise_into(path: Path, target: Path, dtype: str, say: Callable[[str], None]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    folder, name = str(path.parent), path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # An architecture transformers cannot read raises a subclass of RuntimeError, so it lands here too.
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(
            f"transformers cannot load {path}: {exc}",
            hint="transformers reads GGUF files of the architectures and quantisation types it lists in "
            "its GGUF documentation; convert other files with llama.cpp's tools first",
        ) from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the saved weights are plain floating point
    config.dtype = torch_dtype
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config)
    # assign=True takes the dequantised tensors as they are instead of copying into meta storage
    plain.load_state_dict({k: v.to(torch_dtype) for k, v in loaded.state_dict().items()}, strict=True, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        plain.tie_weights()
    plain.generation_config = loaded.generation_config
    del loaded
    say(f"dequantised {sum(p.numel() for p in plain.parameters()) / 1e6:.1f}M parameters to {dtype}")
    plain.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and not (target / "chat_template.jinja").is_file():
        (target / "chat_template.jinja").write_text(template, encoding="utf-8")


def import_gguf(path: str | Path, *, out: str | Path | None = None, dtype: str = "fp32",
                say: Callable[[str], None] = print) -> ImportedGGUF:
    """Dequantise the GGUF at `path` into `out` (default: the cache, keyed by the file's SHA-256).

    A directory that already holds this file's import (same hash, same dtype) is reused as it is.
    """
    from tunesmith import __version__ as tunesmith_version

    source = Path(path).expanduser()
    if not source.is_file():
        raise ModelError(f"GGUF file not found: {source}")
    if dtype not in _DTYPES:
        raise ModelError(f"unknown dtype {dtype!r} for a GGUF import", hint=f"use one of {', '.join(_DTYPES)}")
    sha = _stamped_sha256(source)
    target = Path(out).expanduser() if out is not None else cache_root() / f"{sha[:16]}-{dtype}"
    existing = _read_manifest(target) if target.is_dir() else None
    if existing and existing.get("source", {}).get("sha256") == sha and existing.get("dtype") == dtype \
            and (target / "config.json").is_file():
        return ImportedGGUF(target, sha, existing.get("quantization", {}).get("file_type", "unknown"), reused=True)
    if target.exists() and any(target.iterdir()):
        raise ModelError(f"{target} already holds files that are not an import of {source.name}",
                         hint="pass an empty or new --out directory")
    quant = describe_quantization(source)
    say(f"importing {source} ({quant['file_type']}, {source.stat().st_size / 1e6:.0f} MB) into {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the import is an ordinary model directory
    try:
        _dequantise_into(source, staging, dtype, say)
        import transformers

        manifest = {
            "stage": STAGE, "tunesmith_version": tunesmith_version, "transformers_version": transformers.__version__,
            "source": {"path": str(source.resolve()), "name": source.name, "sha256": sha,
                       "bytes": source.stat().st_size},
            "quantization": quant, "dtype": dtype,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if target.exists():
            target.rmdir()  # empty, checked above
        staging.replace(target)  # a crash leaves a hidden staging folder, never a half-written import
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return ImportedGGUF(target, sha, quant["file_type"], reused=False)


def run(cfg: "ImportConfig", say: Callable[[str], None] = print) -> ImportedGGUF:
    """`tunesmith models import`: `cfg.file` imported (or found already imported), said through `say`."""
    from tunesmith.errors import ConfigError

    if not is_gguf_path(cfg.file):
        raise ConfigError(f"{cfg.file} is not a .gguf file",
                          hint="Hugging Face model directories need no import: pass them as `model:` directly")
    result = import_gguf(cfg.file, out=cfg.out, dtype=cfg.dtype, say=say)
    say(result.describe())
    return result


def resolve_gguf(path: str | Path) -> str:
    """The cached Hugging Face directory for a `.gguf` model path, importing it on first use."""
    import sys

    # stderr: stdout may carry a stage's machine-readable output
    return str(import_gguf(path, say=lambda text: print(text, file=sys.stderr, flush=True)).directory.resolve())


__all__ = ["ImportedGGUF", "cache_root", "describe_quantization", "file_sha256", "import_gguf", "is_gguf_path",
           "resolve_gguf", "run"]
