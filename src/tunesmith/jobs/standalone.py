"""`tunesmith jobs worker --store DIR`: run the jobs of a store in a process of its own.

The server then only serves the API and the models (`jobs.run_worker: false`); one or more
workers, on this host or on others that share the store's directory, train the jobs. A worker
stops on SIGTERM or Ctrl-C: its training processes stop and its jobs resume from their last
checkpoint on the next worker (another one at once, or this one started again).
"""

from __future__ import annotations

import logging
import signal
from typing import Callable, Optional

from tunesmith.jobs.config import JobsWorkerConfig
from tunesmith.jobs.store import JobStore
from tunesmith.jobs.worker import Supervisor


def run(cfg: JobsWorkerConfig, announce: Optional[Callable[[str], None]] = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    worker = Supervisor(JobStore(cfg.root), cfg)
    stop = lambda *_: worker._stop.set()  # noqa: E731 - the loop notices within one poll
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    if announce is not None:
        announce(f"jobs worker {worker.worker} on {cfg.root} ({cfg.parallel_jobs} job(s) at a time); "
                 "Ctrl-C stops it")
    try:
        worker.loop()
    finally:
        worker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
