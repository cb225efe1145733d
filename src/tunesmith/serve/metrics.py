"""Prometheus metrics of one server, in a registry of its own (so several apps can share a process)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("tunesmith_requests", "HTTP requests by route, model and status code",
                                ["route", "model", "status"], registry=r)
        self.latency = Histogram("tunesmith_request_latency_seconds", "Time from request to last byte",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("tunesmith_time_to_first_token_seconds", "Time from request to first generated token",
                              ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("tunesmith_prompt_tokens", "Prompt tokens processed", ["model"], registry=r)
        self.generated_tokens = Counter("tunesmith_generated_tokens", "Tokens generated", ["model"], registry=r)
        self.cancelled = Counter("tunesmith_cancelled_sequences",
                                 "Sequences stopped early because their client went away", registry=r)
        self.queue_depth = Gauge("tunesmith_queue_depth", "Sequences waiting for a batch slot", registry=r)
        self.running = Gauge("tunesmith_running_sequences", "Sequences in the running batch", registry=r)
        self.loaded_adapters = Gauge("tunesmith_loaded_adapters", "LoRA adapters in memory", registry=r)
        self.batch_size = Histogram("tunesmith_batch_size", "Sequences per forward pass",
                                    buckets=_BATCH_BUCKETS, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
