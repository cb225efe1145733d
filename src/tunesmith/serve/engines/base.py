"""What the routes need from an engine, whichever generates the tokens.

A route resolves the request's `model` to a `Target` (the base or one adapter), renders and
tokenises the prompt itself (so every engine sees the same token ids), checks the limits, and
calls `submit`. The engine answers with a `RequestHandle` whose `events` queue receives one
`Event` per piece of text for each choice, ending with a `finish_reason` (or an `error`, an
`APIError` the route sends as it is). `handle.cancel()` stops the generation when the client goes.
Adapters are added and removed through the engine, since only it knows where they must be loaded.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import time
from dataclasses import dataclass
from typing import Any, Optional

from tunesmith.serve.adapters import PreparedAdapter, Target
from tunesmith.serve.protocol import APIError


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    seed: Optional[int] = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclass
class Event:
    """What one step produced for one choice of a request."""

    index: int
    text: str
    completion_tokens: int  # tokens generated so far for this choice
    token_id: Optional[int] = None  # the token generated this step (None on errors, or when the engine does not say)
    finish_reason: Optional[str] = None
    error: Optional[APIError] = None


class RequestHandle:
    """The HTTP side's view of a submitted request: its events arrive on `events`."""

    def __init__(self, engine: "GenerationEngine", loop: asyncio.AbstractEventLoop, target: Target,
                 prompts: list[list[int]], n: int):
        self.engine = engine
        self.loop = loop
        self.target = target
        self.prompts = prompts
        self.n = n
        self.prompt_tokens = sum(len(p) for p in prompts)
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = False
        self.created = time.monotonic()

    def cancel(self) -> None:
        """The client went away: stop generating for it."""
        if not self.cancelled:
            self.cancelled = True
            self.engine.wake()


def shutting_down() -> APIError:
    return APIError(503, "The server is shutting down.", type="server_error", code="server_shutting_down")


def queue_full(waiting: int) -> APIError:
    return APIError(429, f"The server is busy ({waiting} sequences queued); retry shortly.",
                    type="rate_limit_error", code="queue_full", headers={"Retry-After": "1"})


class GenerationEngine(abc.ABC):
    """One engine behind the API. `start` runs in the app's lifespan (on its event loop) before the
    first request; `shutdown` fails whatever is still running with 503."""

    name: str = "own"

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def shutdown(self, timeout: float = 30.0) -> None: ...

    @abc.abstractmethod
    def submit(self, target: Target, prompts: list[list[int]], params: SamplingParams,
               n: int = 1) -> RequestHandle:
        """Queue `n` choices for each prompt, numbered prompt-major like OpenAI's; raises APIError
        (429 when the queue is full, 503 when the engine cannot take work)."""

    @abc.abstractmethod
    def add_adapter(self, prepared: PreparedAdapter) -> concurrent.futures.Future:
        """Make `prepared` servable; the future fails with a TunesmithError/APIError if it cannot be."""

    @abc.abstractmethod
    def remove_adapter(self, name: str) -> concurrent.futures.Future: ...

    def wake(self) -> None:
        """Called when a handle is cancelled; engines that poll for cancellation wake up here."""

    @property
    @abc.abstractmethod
    def queued(self) -> int: ...

    @property
    @abc.abstractmethod
    def running(self) -> int: ...

    @property
    @abc.abstractmethod
    def idle(self) -> bool: ...

    def health(self) -> dict[str, Any]:
        """What /health reports about the engine; `alive` False turns /health into a 503."""
        return {"engine": self.name, "alive": True}
