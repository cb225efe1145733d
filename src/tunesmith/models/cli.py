"""`tunesmith models ...`: bring base models into a form every stage can load.

    tunesmith models import SmolLM2-135M-Instruct.Q4_1.gguf --out models/smollm2
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

models_app = typer.Typer(help="Import base models; list, show, add and remove model versions in the registry.",
                         no_args_is_help=True)


@models_app.command("import")
def import_model(
    file: Path = typer.Argument(..., help="A .gguf file (llama.cpp, Ollama, LM Studio)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Directory to write (default: the cache, keyed by "
                                       "the file's SHA-256; `model: FILE.gguf` in a config uses the same cache)."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32 (exact), bf16 or fp16 (half the disk)."),
) -> None:
    """Dequantise a GGUF model into a Hugging Face directory (safetensors, tokenizer, chat template)."""
    from tunesmith.errors import ConfigError
    from tunesmith.models.gguf_import import import_gguf, is_gguf_path

    if not is_gguf_path(file):
        raise ConfigError(f"{file} is not a .gguf file",
                          hint="Hugging Face model directories need no import: pass them as `model:` directly")
    result = import_gguf(file, out=out, dtype=dtype, say=lambda text: typer.echo(text, err=True))
    state = "already imported" if result.reused else "imported"
    typer.echo(f"{state}: {result.directory} ({result.quantization} source, sha256 {result.sha256[:16]}…)", err=True)
    typer.echo(str(result.directory))


from tunesmith.registry.cli import register_commands  # noqa: E402  (list, show, rm, add)

register_commands(models_app)

__all__ = ["models_app"]
