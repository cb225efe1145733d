"""The drift report: per-version rates from the request log, the gate's baseline beside them,
the `models report` command and the Prometheus collector."""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry, generate_latest
from typer.testing import CliRunner

from tunesmith.registry.cli import registry_app
from tunesmith.registry.drift import DriftCollector, baselines, report
from tunesmith.registry.feedback import FeedbackRequest, RequestLog, RequestLogConfig


def _log(tmp_path) -> RequestLog:
    request_log = RequestLog(RequestLogConfig(path=tmp_path / "log.sqlite3"))
    answers = [("a", "tickets@1", '{"ok": 1}', "stop"), ("b", "tickets@1", "not json", "length"),
               ("c", "tickets@2", '{"ok": 2}', "stop"), ("d", "faq@1", "{}", "stop")]
    for rid, served, answer, finish in answers:
        request_log.record(rid, served.split("@")[0], served, [{"role": "user", "content": "q"}], answer, finish)
    request_log.add_feedback(FeedbackRequest(response_id="a", rating="down"))
    request_log.add_feedback(FeedbackRequest(response_id="b", rating="up"))
    return request_log


def test_rates_per_version_with_the_gate_baseline(tmp_path):
    history = [{"gate": {"candidate": "tickets@1", "rows": [{"metric": "json_valid", "candidate": 0.9},
                                                          {"metric": "stop_rate", "candidate": 1.0}]}}]
    result = report(_log(tmp_path), "tickets", history=history)
    one, two = result["versions"]["tickets@1"], result["versions"]["tickets@2"]
    assert (one["requests"], one["json_valid"], one["stop_rate"], one["thumbs_down_rate"]) == (2, 0.5, 0.5, 0.5)
    assert one["baseline"] == {"json_valid": 0.9, "stop_rate": 1.0} and two["baseline"] == {}
    assert two["thumbs_down_rate"] is None and "faq@1" not in result["versions"]
    assert baselines([{"gate": None}]) == {}
    assert report(_log(tmp_path / "x"), "tickets", window_s=10, now=10**10)["versions"] == {}


def test_models_report_and_the_metrics_gauges(tmp_path):
    request_log = _log(tmp_path)
    out = CliRunner().invoke(registry_app, ["report", "tickets", "--log", str(request_log.cfg.path), "--json",
                                            "--registry", str(tmp_path / "r.sqlite3")])
    assert out.exit_code == 0, out.output
    assert set(json.loads(out.output)["versions"]) == {"tickets@1", "tickets@2"}
    registry = CollectorRegistry()
    registry.register(DriftCollector(request_log))
    text = generate_latest(registry).decode()
    assert 'tunesmith_drift{measure="thumbs_down_rate",version="tickets@1"} 0.5' in text
    assert 'tunesmith_drift{measure="requests",version="faq@1"} 1.0' in text
