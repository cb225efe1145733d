"""The `models report --html` page: a chart per drift rate, a point per version and window in
which it answered, the gate baseline, nothing fetched from elsewhere, and every text escaped."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from typer.testing import CliRunner

from tunesmith.registry.cli import registry_app
from tunesmith.registry.drift import MEASURES, report, timeline
from tunesmith.registry.drift_page import render
from tunesmith.registry.feedback import FeedbackRequest, RequestLog, RequestLogConfig

NOW, HOUR = 1_000_000_000.0, 3600.0
SVG = "{http://www.w3.org/2000/svg}"


def _charts(page: str) -> dict[str, ET.Element]:
    charts = {}
    for block in re.findall(r"<svg .*?</svg>", page, flags=re.S):
        element = ET.fromstring(block)  # well-formed: every text was escaped
        charts[element.get("data-measure")] = element
    return charts


def _points(chart: ET.Element, version: str) -> list[int]:
    return [int(c.get("data-window")) for c in chart.iter(f"{SVG}circle") if c.get("data-version") == version]


def _log(tmp_path) -> RequestLog:
    request_log = RequestLog(RequestLogConfig(path=tmp_path / "log.sqlite3"))
    # (id, served, hours before NOW, answer, finish, rating)
    answers = [("a", "tickets@1", 5.5, '{"ok": 1}', "stop", "down"), ("b", "tickets@1", 4.5, "text", "length", None),
               ("c", "tickets@1", 3.2, "{}", "stop", "up"), ("d", "tickets@1", 2.7, "{}", "stop", None),
               ("e", "tickets@2", 2.5, "{}", "stop", None), ("f", "tickets@2", 1.5, "[]", "stop", "down"),
               ("g", "tickets@2", 0.5, "{}", "stop", None), ("h", "tickets@<script>", 0.4, "x", "stop", None),
               ("old", "tickets@1", 9.0, "{}", "stop", None)]
    for rid, served, hours, answer, finish, rating in answers:
        request_log.record(rid, "tickets", served, [{"role": "user", "content": "q"}], answer, finish)
        request_log.db.query("UPDATE exchanges SET at = ? WHERE id = ?", (int(NOW - hours * HOUR), rid))
        if rating:
            request_log.add_feedback(FeedbackRequest(response_id=rid, rating=rating))
    return request_log


def test_a_chart_per_rate_with_a_point_per_window_a_version_answered_in(tmp_path):
    request_log = _log(tmp_path)
    series = timeline(request_log, "tickets", window_s=6 * HOUR, every_s=HOUR, now=NOW)
    assert series["windows"] == 6
    assert [(p["window"], p["requests"]) for p in series["versions"]["tickets@1"]] == [(0, 1), (1, 1), (2, 1), (3, 1)]
    assert series["versions"]["tickets@1"][1]["json_valid"] == 0.0 and series["versions"]["tickets@1"][1]["stop_rate"] == 0
    baselines = {"tickets@1": {"json_valid": 0.9, "stop_rate": 1.0}}
    page = render(report(request_log, "tickets", window_s=6 * HOUR, now=NOW), series, baselines)
    charts = _charts(page)
    assert set(charts) == set(MEASURES)
    for measure in ("json_valid", "stop_rate", "answer_chars_mean"):
        assert _points(charts[measure], "tickets@1") == [0, 1, 2, 3]
        assert _points(charts[measure], "tickets@2") == [3, 4, 5]
    # Thumbs-down has a point only where some answer was rated.
    assert _points(charts["thumbs_down_rate"], "tickets@1") == [0, 2]
    assert _points(charts["thumbs_down_rate"], "tickets@2") == [4]
    lines = [(line.get("data-version"), float(line.get("y1"))) for line in charts["json_valid"].iter(f"{SVG}line")]
    assert [v for v, _ in lines] == ["tickets@1"]
    assert "<script" not in page and "tickets@&lt;script&gt;" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page


def test_models_report_writes_the_page(tmp_path):
    request_log = RequestLog(RequestLogConfig(path=tmp_path / "log.sqlite3"))
    for rid, served in (("a", "tickets@1"), ("b", "tickets@2"), ("c", "tickets@2")):
        request_log.record(rid, "tickets", served, [{"role": "user", "content": "q"}], "{}", "stop")
    out = CliRunner().invoke(registry_app, ["report", "tickets", "--log", str(request_log.cfg.path), "--window", "2h",
                                            "--every", "30m", "--html", str(tmp_path / "drift.html"),
                                            "--registry", str(tmp_path / "r.sqlite3")])
    assert out.exit_code == 0, out.output
    charts = _charts((tmp_path / "drift.html").read_text())
    assert set(charts) == set(MEASURES)
    assert _points(charts["stop_rate"], "tickets@1") == [3] and _points(charts["stop_rate"], "tickets@2") == [3]
