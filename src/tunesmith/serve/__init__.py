"""`tunesmith serve`: one base model and many LoRA adapters behind an OpenAI-compatible HTTP API.

protocol (OpenAI schemas and errors), engine (continuous batching across adapters), adapters
(registry, LRU, path confinement), app (`build_app`), routes, auth, metrics, server (`run`).
"""

from __future__ import annotations


def run(cfg) -> None:
    """Serve until SIGTERM/SIGINT; the same code as `tunesmith serve` (imports torch on call)."""
    from tunesmith.serve.server import run as _run

    _run(cfg)


__all__ = ["run"]
