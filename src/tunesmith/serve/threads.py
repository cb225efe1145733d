"""CPU threads of a server process, chosen rather than left to library defaults.

Left alone, torch starts one intra-op thread per core and the tokenizers library another pool
of the same size, and both spin on every core next to the event loop. Under CPU contention that
collapsed a measured load test (8 clients: p95 27.5 s); one intra-op thread gave p95 0.34 s and 18x
the requests. So:

- the engine thread's forward passes use `threads` intra-op threads (default: half the cores
  this process may run on, 1 to 8), and a single inter-op thread (the engine runs one op graph
  at a time);
- tokenisation and chat-template rendering run on a small pool of their own
  (`TOKENIZE_WORKERS`), never on the event loop, with the tokenizers library's own parallelism
  off (each request encodes one text);
- the event loop (uvicorn's one worker) keeps a core for accepting requests and /health.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os

log = logging.getLogger("tunesmith.serve")

TOKENIZE_WORKERS = 2
MAX_DEFAULT_THREADS = 8


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(cores: int | None = None) -> int:
    """Half the usable cores, 1 to MAX_DEFAULT_THREADS: the rest serve the event loop and tokenisation."""
    return max(1, min(MAX_DEFAULT_THREADS, (cores or available_cores()) // 2))


def apply_thread_limits(threads: int | None) -> int:
    """Set the process's torch and tokenizers threading; returns the intra-op thread count."""
    import torch

    count = threads or default_threads()
    torch.set_num_threads(count)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first parallel op; harmless when too late
        pass
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    log.info("using %d intra-op thread(s) for the model, %d for tokenisation", count, TOKENIZE_WORKERS)
    return count


def tokenize_pool() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(TOKENIZE_WORKERS, thread_name_prefix="tunesmith-tokenize")
