"""Drift: what a version's logged production answers look like, next to its eval baseline.

Per version that answered in the window: answers that parse as JSON, answers that ended on a stop
(rather than the token limit), mean answer length in characters, and the share of rated answers
rated down. The baseline is what the promotion gate measured for that version on the gate set
(`json_valid`, `stop_rate`), read from the alias history. Computed from the request log, so it
covers the sampled, opted-in traffic only.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import Any, Optional

from tunesmith.registry.feedback import RequestLog

MEASURES = ("json_valid", "stop_rate", "answer_chars_mean", "thumbs_down_rate")


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def version_rates(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """served version -> {requests, json_valid, stop_rate, answer_chars_mean, thumbs_down_rate, rated}."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[row["served"]].append(row)
    out = {}
    for served, group in sorted(grouped.items()):
        n = len(group)
        rated = [r for r in group if r["rating"] is not None]
        out[served] = {
            "requests": n,
            "json_valid": sum(_is_json(r["answer"]) for r in group) / n,
            "stop_rate": sum(r["finish_reason"] == "stop" for r in group) / n,
            "answer_chars_mean": sum(len(r["answer"]) for r in group) / n,
            "rated": len(rated),
            "thumbs_down_rate": (sum(r["rating"] == "down" for r in rated) / len(rated)) if rated else None,
        }
    return out


def baselines(history: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """version ref -> the metrics the promotion gate measured for it (the latest gate that did)."""
    out: dict[str, dict[str, float]] = {}
    for entry in history:
        gate = entry.get("gate") or {}
        if gate.get("candidate"):
            out[gate["candidate"]] = {r["metric"]: r["candidate"] for r in gate.get("rows", [])}
    return out


def report(request_log: RequestLog, model: str, *, window_s: float = 86400.0,
           history: Optional[list[dict[str, Any]]] = None, now: Optional[float] = None) -> dict[str, Any]:
    rows = request_log.exchanges(model, (now or time.time()) - window_s)
    rates = version_rates(rows)
    base = baselines(history or [])
    versions = {}
    for served, measured in rates.items():
        baseline = base.get(served, {})
        versions[served] = {**measured, "baseline": {k: baseline[k] for k in ("json_valid", "stop_rate") if k in baseline}}
    return {"model": model, "window_s": window_s, "versions": versions}


def timeline(request_log: RequestLog, model: str, *, window_s: float, every_s: float,
             now: Optional[float] = None) -> dict[str, Any]:
    """The rates per version in consecutive windows of `every_s` seconds over the last `window_s`:
    {"start", "every_s", "windows": n, "versions": {ref: [{"window", "start", **rates}, ...]}}. A
    version gets a point only for the windows in which it answered."""
    if every_s <= 0 or window_s <= 0:
        raise ValueError("window and step must be positive")
    now = time.time() if now is None else now
    count = max(1, int(-(-window_s // every_s)))  # ceil: the last window ends now
    start = now - count * every_s
    buckets: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in request_log.exchanges(model, start):
        buckets[min(int((row["at"] - start) // every_s), count - 1)].append(row)
    versions: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for index in sorted(buckets):
        for served, rates in version_rates(buckets[index]).items():
            versions[served].append({"window": index, "start": start + index * every_s, **rates})
    return {"model": model, "start": start, "every_s": every_s, "windows": count, "versions": dict(versions)}


class DriftCollector:
    """Prometheus collector: `tunesmith_drift{version, measure}` over the last `window_s` seconds,
    computed from the request log when /metrics is scraped."""

    def __init__(self, request_log: RequestLog, window_s: float = 3600.0):
        self.request_log = request_log
        self.window_s = window_s

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("tunesmith_drift", "Logged production answers per version over the drift window",
                                   labels=["version", "measure"])
        for served, rates in version_rates(self.request_log.exchanges(None, time.time() - self.window_s)).items():
            for measure in ("requests", *MEASURES):
                if rates[measure] is not None:
                    family.add_metric([served, measure], float(rates[measure]))
        yield family
