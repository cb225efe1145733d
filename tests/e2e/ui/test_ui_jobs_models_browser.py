"""The jobs page, the models page and the streamed playground in a real browser.

The jobs and models pages run against a real `tunesmith serve` with the jobs API and a registry:
a file with a broken line shows that line's problem, a job on the embedded model trains (in its
own process) to `succeeded` with its loss curve drawn from its events, another is cancelled; the
registry's versions are shown and a rollback (and a promotion the gate refuses) lands in the
history. The playground's answers stream in token by token and end equal to the non-streamed
greedy answers; Stop aborts the stream at the server.
"""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from jobs_helpers import jobs_settings, ticket_lines, write_lines
from ui_helpers import KEY, ThreadedApp, chart_series, coloured_pixels, open_ui, text_of, wait

from tunesmith.registry.aliases import Aliases
from tunesmith.registry.lineage import version_fields
from tunesmith.registry.store import Registry

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {KEY}"}
BASE = "tunesmith-demo-4m"


@pytest.fixture(scope="module")
def jobs_server(workspace, tmp_path_factory):
    """`tunesmith serve` with a `jobs:` section and, as its registry, the one its jobs record into,
    holding two versions of `tickets` (the workspace's trained run), promoted one after the other."""
    from serve_helpers import LiveServer

    from tunesmith.serve.config import ServeConfig
    from tunesmith.ui.config import WORKSPACE_ENV

    root = tmp_path_factory.mktemp("ui-jobs")
    jobs = jobs_settings(root / "jobs")
    registry_path = root / "jobs" / "registry.sqlite3"
    registry = Registry(registry_path)
    for _ in range(2):
        fields = version_fields(workspace / "runs" / "sft")
        registry.add("tickets", source=f"run:{fields['run_dir']}", **fields)
    aliases = Aliases(registry)
    aliases.promote("tickets@1", actor="ana")
    aliases.promote("tickets@2", actor="ana", reason="better on the eval")
    registry.close()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(WORKSPACE_ENV, str(workspace))
        cfg = ServeConfig(api_key=KEY, jobs=jobs, registry=registry_path, log_level="warning", default_max_tokens=16)
        with LiveServer(cfg) as live:
            yield live, root


@pytest.fixture(scope="module")
def jobs_ui(workspace, jobs_server):
    """A standalone UI pointed at the jobs server: the models page goes through its forwarding."""
    from tunesmith.ui.app import build_ui_app
    from tunesmith.ui.config import UiConfig

    with ThreadedApp(build_ui_app(UiConfig(workspace=workspace, server=jobs_server[0].url, api_key=KEY))) as ui:
        yield ui


def test_upload_shows_each_broken_line_then_a_job_trains_to_succeeded_with_its_loss_chart(browser, jobs_server, shoot):
    server, root = jobs_server
    good = ticket_lines(10)
    no_answer = json.dumps({"messages": [{"role": "user", "content": "<b>where is my order?</b>"}]})
    broken = write_lines(root / "broken.jsonl", [good[0], good[1], '{"messages": [ <script>', good[2], no_answer])
    open_ui(browser, server.url, "#/jobs")
    browser.find_element("id", "upload-file").send_keys(str(broken))
    browser.find_element("id", "upload-button").click()
    wait(browser, lambda d: "refused" in (text_of(d, "upload-status") or ""), what="the upload's answer")
    rows = [[c.text for c in r.find_elements("css selector", "td")]
            for r in browser.find_elements("css selector", "#check-problems tbody tr")]
    assert [(r[0], r[1], r[4]) for r in rows] == [("3", "invalid_json", "upload"), ("5", "no_assistant_turn", "job start")]
    assert "5 lines, 3 good supervised examples, 2 problems" in browser.find_element("id", "check-summary").text
    assert "Line 3: invalid_json" in browser.find_element("id", "upload-status").text  # the server's own words
    assert browser.find_elements("css selector", "#view script, #view b") == []
    shoot("jobs-upload")

    train = write_lines(root / "train.jsonl", good)
    browser.find_element("id", "upload-file").clear()
    browser.find_element("id", "upload-file").send_keys(str(train))
    browser.find_element("id", "upload-button").click()
    wait(browser, lambda d: "Uploaded as file-" in (text_of(d, "upload-status") or ""), what="the upload")
    file_id = text_of(browser, "upload-status").split("Uploaded as ")[1].split(" ")[0]
    assert browser.find_elements("css selector", "#check-problems") == []
    wait(browser, lambda d: d.find_elements("css selector", f"#job-training option[value='{file_id}']"), what="the file list")

    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "job-training")).select_by_value(file_id)
    assert browser.find_element("id", "job-model").get_attribute("value") == BASE
    for field, value in (("job-epochs", "2"), ("job-batch", "5"), ("job-suffix", "ui"), ("job-seed", "7")):
        browser.find_element("id", field).clear()
        browser.find_element("id", field).send_keys(value)
    browser.find_element("id", "job-create").click()
    wait(browser, lambda d: "#/job/ftjob-" in d.current_url, what="the job's page")
    job_id = browser.current_url.split("#/job/")[1]
    wait(browser, lambda d: text_of(d, "job-status") in ("succeeded", "failed", "cancelled"), timeout=400,
         what="the job to finish")
    assert text_of(browser, "job-status") == "succeeded", text_of(browser, "job-error")
    events = httpx.get(f"{server.url}/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1000}, headers=AUTH).json()["data"]
    steps = sorted(e["data"]["step"] for e in events if e["type"] == "metrics" and "train_loss" in e["data"])
    assert steps == [1, 2, 3, 4]
    wait(browser, lambda d: chart_series(d, "job-loss-chart") and chart_series(d, "job-loss-chart")[0]["points"] == 4,
         what="the loss chart")
    assert coloured_pixels(browser, "job-loss-chart", chart_series(browser, "job-loss-chart")[0]["color"]) > 100
    shown_events = browser.find_element("id", "job-events").text
    assert "The job has successfully completed" in shown_events and "Step 4/4" in shown_events
    job = httpx.get(f"{server.url}/v1/fine_tuning/jobs/{job_id}", headers=AUTH).json()
    assert job["fine_tuned_model"] in browser.find_element("id", "job-details").text
    assert browser.find_element("id", "job-cancel").is_displayed() is False
    shoot("job", at="job-loss-chart")

    # A second job, cancelled from its page before it finishes.
    open_ui(browser, server.url, "#/jobs")
    Select(browser.find_element("id", "job-training")).select_by_value(file_id)
    browser.find_element("id", "job-create").click()
    wait(browser, lambda d: "#/job/ftjob-" in d.current_url and job_id not in d.current_url, what="the second job")
    wait(browser, lambda d: d.find_element("id", "job-cancel").is_displayed(), what="the cancel button")
    browser.find_element("id", "job-cancel").click()
    wait(browser, lambda d: text_of(d, "job-status") == "cancelled", what="the job to be cancelled")
    assert "Fine-tuning job cancelled" in browser.find_element("id", "job-events").text
    open_ui(browser, server.url, "#/jobs")
    listed = browser.find_element("id", "jobs-table").text
    assert job_id in listed and "succeeded" in listed and "cancelled" in listed
    shoot("jobs")


def test_models_page_shows_versions_and_a_rollback_lands_in_the_history(browser, jobs_ui, monkeypatch, shoot):
    open_ui(browser, jobs_ui.url, "#/models?name=tickets")
    versions = browser.find_element("id", "versions-table").text
    assert "tickets@1" in versions and "tickets@2" in versions and "chain: train" in versions
    assert "production" in versions
    assert [c.text for c in browser.find_elements("css selector", "#aliases-table tbody tr td")][:2] == ["production", "@2"]
    history = browser.find_elements("css selector", "#history-table tbody tr")
    assert len(history) == 2

    # A promotion the gate refuses: the table of both versions' metrics is shown, nothing moves.
    def evaluate(version, data, regression, out):
        return {"tuned": {"exact_match": 0.9 if version.version == 2 else 0.4}}
    monkeypatch.setattr("tunesmith.registry.gate._eval_stage", evaluate)
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "promote-version")).select_by_value("1")
    Select(browser.find_element("id", "promote-gate")).select_by_value("prompts.jsonl")
    browser.find_element("id", "actor").send_keys("ann")
    browser.find_element("id", "promote").click()
    wait(browser, lambda d: d.find_elements("id", "gate-table"), what="the gate table")
    gate_row = [c.text for c in browser.find_elements("css selector", "#gate-table tbody tr td")]
    assert gate_row == ["exact_match", "0.9", "0.4", "-0.5", "worse"]
    assert "fails the promotion gate" in browser.find_element("id", "gate-result").text
    assert len(browser.find_elements("css selector", "#history-table tbody tr")) == 2
    shoot("models-gate", at="gate-result")

    browser.find_element("id", "rollback").click()
    wait(browser, lambda d: "rollback" in (text_of(d, "action-done") or ""), what="the rollback")
    wait(browser, lambda d: len(d.find_elements("css selector", "#history-table tbody tr")) == 3, what="the history")
    newest = [c.text for c in browser.find_elements("css selector", "#history-table tbody tr:first-child td")]
    assert newest[2:7] == ["production", "rollback", "ui:ann", "@2", "@1"]
    assert [c.text for c in browser.find_elements("css selector", "#aliases-table tbody tr td")][:2] == ["production", "@1"]
    shoot("models", at="aliases-table")

    # A canary: a quarter of production's traffic to version 2, shown as the alias's weights.
    Select(browser.find_element("id", "canary-version")).select_by_value("2")
    browser.find_element("id", "canary-percent").clear()
    browser.find_element("id", "canary-percent").send_keys("25")
    browser.find_element("id", "canary").click()
    wait(browser, lambda d: "canary" in (text_of(d, "action-done") or ""), what="the canary")
    wait(browser, lambda d: "@1: 75%, @2: 25%" in (text_of(d, "aliases-table") or ""), what="the canary weights")
    assert "production 25%" in browser.find_element("id", "versions-table").text
    newest = [c.text for c in browser.find_elements("css selector", "#history-table tbody tr:first-child td")]
    assert newest[3:7] == ["canary", "ui:ann", "@1", "@1: 75%, @2: 25%"]


def _record_growth(browser):
    """Record the text of each side's pending answer every time the page changes it."""
    browser.execute_script("""
        window.__growth = {left: [], right: []};
        for (const side of ['left', 'right']) {
          new MutationObserver(() => {
            const pending = document.querySelector(`#chat-${side} .role-pending .text`);
            if (pending) window.__growth[side].push(pending.textContent);
          }).observe(document.getElementById(`chat-${side}`), {childList: true, subtree: true, characterData: true});
        }""")


def test_playground_streams_token_by_token_and_ends_at_the_greedy_answer(browser, serve, standalone_ui):
    question = "What is a generator?"
    open_ui(browser, standalone_ui.url, "#/playground")
    wait(browser, lambda d: d.find_element("id", "model-right").get_attribute("value") == "sft", what="the model lists")
    browser.find_element("id", "max-tokens").clear()
    browser.find_element("id", "max-tokens").send_keys("96")
    _record_growth(browser)
    browser.find_element("id", "user-message").send_keys(question)
    browser.find_element("id", "send").click()
    wait(browser, lambda d: len(d.find_elements("css selector", ".chat-log .role-assistant")) == 2, what="both answers")
    growth = browser.execute_script("return window.__growth")
    for side, model in (("left", BASE), ("right", "sft")):
        direct = httpx.post(f"{serve.url}/v1/chat/completions", headers=AUTH, timeout=120, json={
            "model": model, "messages": [{"role": "user", "content": question}], "temperature": 0, "top_p": 1,
            "max_tokens": 96, "seed": 0}).json()["choices"][0]["message"]["content"]
        final = browser.find_element("css selector", f"#chat-{side} .role-assistant .text").get_attribute("textContent")
        assert final == direct
        seen = [text for text in dict.fromkeys(growth[side]) if text]
        assert len(seen) >= 3, seen  # partial answers were on screen before the whole one
        assert all(direct.startswith(text) for text in seen) and all(len(a) < len(b) for a, b in zip(seen, seen[1:]))
    assert text_of(browser, "playground-status") == ""


SLOW_WORDS = ("A generator is a function that yields its values one at a time, "
              "pausing after each until the caller asks for the next one.").split()


def test_stop_aborts_the_stream_and_keeps_what_was_written(browser, workspace, shoot):
    """A stand-in server that writes a word every 50 ms until the client goes away."""
    from tunesmith.ui.app import build_ui_app
    from tunesmith.ui.config import UiConfig

    slow = FastAPI()
    stopped = threading.Event()
    sent = []

    @slow.get("/v1/models")
    async def models():
        return {"data": [{"id": "slow", "parent": None}]}

    @slow.post("/v1/chat/completions")
    async def chat(request: Request):
        async def words():
            try:
                for i in range(10_000):
                    sent.append(i)
                    word = SLOW_WORDS[i % len(SLOW_WORDS)] + " "
                    yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': word}}]})}\n\n"
                    await asyncio.sleep(0.05)
            finally:
                stopped.set()
        return StreamingResponse(words(), media_type="text/event-stream")

    with ThreadedApp(slow) as server, ThreadedApp(build_ui_app(UiConfig(workspace=workspace, server=server.url))) as ui:
        open_ui(browser, ui.url, "#/playground", key="")
        browser.find_element("id", "user-message").send_keys("What is a generator?")
        browser.find_element("id", "send").click()
        wait(browser, lambda d: len(browser.execute_script(
            "const t = document.querySelector('#chat-left .role-pending .text'); return t ? t.textContent : ''")) > 20,
             what="the stream to start")
        shoot("playground-stream")
        browser.find_element("id", "stop").click()
        wait(browser, lambda d: text_of(d, "playground-status") == "Stopped.", what="the stop")
        assert stopped.wait(20), "the server's stream was not closed"
        kept = browser.find_element("css selector", "#chat-left .role-assistant .text").get_attribute("textContent")
        written = "".join(SLOW_WORDS[i % len(SLOW_WORDS)] + " " for i in range(len(sent)))
        assert len(kept) > 20 and written.startswith(kept) and len(sent) < 10_000
        assert browser.find_element("id", "stop").get_attribute("disabled") is not None
