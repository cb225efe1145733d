"""Run the tunesmith CLI in this process and write its peak memory to a JSON file at exit.

Usage: python bench/gpu/peak.py OUT.json train CONFIG --set ... (the arguments of `tunesmith`).
The peak is what the training process itself reached: the CUDA caching allocator's maximum
reserved and allocated bytes on a GPU, and the maximum resident set size on CPU.
"""

from __future__ import annotations

import atexit
import json
import resource
import sys


def _write(path: str) -> None:
    record = {"max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        record["max_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        record["max_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(record, fh)


if __name__ == "__main__":
    out = sys.argv[1]
    atexit.register(_write, out)
    from tunesmith.cli import main

    main(sys.argv[2:])
