"""The web UI in a real browser: runs and live curves, the playground, blind review, escaping."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time

import httpx
import pytest
from ui_helpers import KEY, ThreadedApp, chart_series, coloured_pixels, open_ui, text_of, wait
from fastapi import FastAPI, Request
from fastapi.responses import Response
from workspace_builder import metrics_records

from tunesmith.ui.reviews import wilson_interval

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {KEY}"}


def test_runs_list_and_the_loss_chart_of_a_real_run(browser, standalone_ui, workspace, shoot):
    open_ui(browser, standalone_ui.url)
    rows = browser.find_elements("css selector", "#runs-table tbody tr")
    listed = {r.find_element("css selector", "td").text: r.text for r in rows}
    assert {"runs/sft", "evals/sft", "data"} <= set(listed)
    assert "finished" in listed["runs/sft"] and "train" in listed["runs/sft"]
    shoot("runs")

    records = metrics_records(workspace / "runs" / "sft")
    open_ui(browser, standalone_ui.url, "#/run?path=runs%2Fsft")
    wait(browser, lambda d: chart_series(d, "loss-chart"), what="the loss chart")
    loss, val = chart_series(browser, "loss-chart")
    assert loss["points"] == sum("loss" in r for r in records) == 8
    assert val["points"] == sum("val_loss" in r for r in records) == 2
    assert coloured_pixels(browser, "loss-chart", loss["color"]) > 200
    assert chart_series(browser, "lr-chart")[0]["points"] == 8
    assert "step 8" in browser.find_element("id", "train-stats").text
    chain = browser.find_element("id", "manifest-chain").text
    assert chain.index("runs/sft") < chain.index("data")
    shoot("run")

    open_ui(browser, standalone_ui.url, "#/run?path=data")
    kept = json.loads((workspace / "data" / "manifest.json").read_text())["counts"]["kept"]
    assert f"{kept} of {kept} examples kept as sft" in browser.find_element("css selector", ".page").text
    assert "tickets.jsonl" in browser.find_element("id", "data-inputs").text
    shoot("data")

    open_ui(browser, standalone_ui.url, "#/compare?a=evals%2Fsft&b=")
    cells = [c.text for c in browser.find_elements("css selector", "#compare-table tbody tr td")]
    tuned = json.loads((workspace / "evals" / "sft" / "metrics.json").read_text())["tuned"]
    assert "chrf" in cells and len(cells) == 4 * len(tuned)
    shoot("compare")

    # Two evaluations side by side: the same one twice differs by nothing on every metric.
    twin = workspace / "evals" / "twin"
    shutil.copytree(workspace / "evals" / "sft", twin)
    try:
        open_ui(browser, standalone_ui.url, "#/compare?a=evals%2Fsft&b=evals%2Ftwin")
        rows = [[c.text for c in r.find_elements("css selector", "td")]
                for r in browser.find_elements("css selector", "#compare-table tbody tr")]
        assert len(rows) == len(tuned) and all(r[3] in ("0", "–") for r in rows)
        assert len(browser.find_elements("css selector", "table.samples tbody tr")) == 4
    finally:
        shutil.rmtree(twin)


def test_a_run_in_progress_is_drawn_as_its_metrics_grow(browser, standalone_ui, workspace):
    real = workspace / "runs" / "sft"
    live = workspace / "runs" / "live"
    shutil.rmtree(live, ignore_errors=True)
    live.mkdir()
    shutil.copy(real / "config.yaml", live / "config.yaml")
    (live / "manifest.json").write_text(json.dumps({"stage": "train", "seed": 42}))  # as written at the start
    lines = (real / "metrics.jsonl").read_text().splitlines(keepends=True)
    (live / "metrics.jsonl").write_text("".join(lines[:3]))
    try:
        open_ui(browser, standalone_ui.url, "#/run?path=runs%2Flive")
        assert browser.find_element("id", "run-status").text == "running"
        wait(browser, lambda d: chart_series(d, "loss-chart") and chart_series(d, "loss-chart")[0]["points"] == 3,
             what="the first three steps")
        with open(live / "metrics.jsonl", "a") as fh:
            fh.writelines(lines[3:])
        total = sum("loss" in json.loads(line) for line in lines)
        wait(browser, lambda d: chart_series(d, "loss-chart")[0]["points"] == total, what="the new steps to be polled")
    finally:
        shutil.rmtree(live, ignore_errors=True)


def test_playground_answers_through_the_live_server(browser, serve, shoot):
    from tunesmith.chat.templates import render_prompt_text

    browser.get(f"{serve.url}/ui/")
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{serve.url}/ui/#/playground")
    browser.refresh()
    key_input = wait(browser, lambda d: d.find_element("id", "key-input").is_displayed() and d.find_element("id", "key-input"),
                     what="the API key field")
    key_input.send_keys(KEY)
    browser.find_element("css selector", "#key-form button").click()
    wait(browser, lambda d: d.find_elements("id", "model-right") and d.find_element("id", "model-right").get_attribute("value") == "sft",
         what="the model lists")
    question = "How do I reset my password?"
    browser.find_element("id", "user-message").send_keys(question)
    browser.find_element("id", "send").click()
    wait(browser, lambda d: len(d.find_elements("css selector", "#chat-right .role-assistant")) == 1, what="the answers")
    shown = {side: browser.find_element("css selector", f"#chat-{side} .role-assistant .text").text for side in ("left", "right")}
    direct = {}
    for side, model in (("left", "tunesmith-demo-4m"), ("right", "sft")):
        response = httpx.post(f"{serve.url}/v1/chat/completions", headers=AUTH, timeout=120, json={
            "model": model, "messages": [{"role": "user", "content": question}], "temperature": 0, "top_p": 1,
            "max_tokens": 128, "seed": 0})
        direct[side] = response.json()["choices"][0]["message"]["content"]
    # The browser shows text with surrounding white space trimmed per line.
    assert shown == {side: text.strip() for side, text in direct.items()}
    assert shown["left"] != shown["right"]

    browser.find_element("id", "user-message").send_keys("And then?")
    browser.find_element("id", "show-rendered").click()
    wait(browser, lambda d: d.find_element("id", "rendered-right").is_displayed(), what="the rendered prompt")
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": direct["right"]},
                {"role": "user", "content": "And then?"}]
    expected = render_prompt_text(serve.state.resolve("sft").tokenizer, messages)
    assert browser.find_element("id", "rendered-right").get_attribute("textContent").endswith(expected)
    shoot("playground")


def _choose(browser, outputs_by_prompt, prefer):
    """Vote for the model `prefer` (1 or 2) on the item shown; a tie when both wrote the same."""
    prompt = browser.find_element("css selector", "#review-item .messages .message:last-child .text").get_attribute("textContent")
    output_1, output_2 = outputs_by_prompt[prompt]
    a = browser.find_element("id", "answer-a").get_attribute("textContent")
    if output_1 == output_2 or prefer == "tie":
        choice, outcome = "tie", "tie"
    else:
        wanted = output_2 if prefer == 2 else output_1
        choice, outcome = ("A" if a == wanted else "B"), f"model_{prefer}"
    browser.find_element("id", f"vote-{choice}").click()
    return outcome


def test_blind_review_session_win_rate_and_preference_export(browser, standalone_ui, workspace, tmp_path, shoot):
    from selenium.webdriver.support.ui import Select

    from tunesmith.data.config import DataPrepareConfig
    from tunesmith.data import prepare

    open_ui(browser, standalone_ui.url, "#/review")
    Select(browser.find_element("id", "review-model-1")).select_by_value("tunesmith-demo-4m")
    Select(browser.find_element("id", "review-model-2")).select_by_value("sft")
    Select(browser.find_element("id", "review-prompts")).select_by_value("prompts.jsonl")
    for field, value in (("review-max-tokens", "48"), ("review-title", "sft vs base")):
        browser.find_element("id", field).clear()
        browser.find_element("id", field).send_keys(value)
    shoot("review-new")
    browser.find_element("id", "review-create").click()
    reviewer = wait(browser, lambda d: d.find_elements("id", "reviewer") and d.find_element("id", "reviewer"),
                    timeout=300, what="the generated review")
    review_id = browser.current_url.split("#/review/")[1]

    db = sqlite3.connect(workspace / ".tunesmith" / "reviews.sqlite")
    outputs = {json.loads(p)[-1]["content"]: (o1, o2) for p, o1, o2 in
               db.execute("SELECT prompt, output_1, output_2 FROM items WHERE review_id = ?", (review_id,))}
    assert len(outputs) == 4
    reviewer.clear()
    reviewer.send_keys("ann")
    browser.find_element("id", "reviewer-start").click()
    outcomes = []
    for prefer in (2, 2, 1, "tie"):
        wait(browser, lambda d: d.find_elements("id", "answer-a"), what="an item")
        progress = browser.find_element("id", "review-progress").text
        if len(outcomes) == 1:
            shoot("review-vote")
        outcomes.append(_choose(browser, outputs, prefer))
        wait(browser, lambda d: text_of(d, "review-progress") not in (None, progress), what="the next item")
    wait(browser, lambda d: d.find_elements("id", "review-done"), what="the end of the review")

    open_ui(browser, standalone_ui.url, f"#/review/{review_id}/results")
    overall = [c.text for c in browser.find_elements("css selector", "#results-table tbody tr:first-child td")]
    wins, compared = outcomes.count("model_2") + 0.5 * outcomes.count("tie"), len(outcomes)
    low, high = wilson_interval(wins, compared)
    assert overall[1] == "4" and overall[6] == f"{100 * wins / compared:.1f}%"
    assert overall[7] == f"{100 * low:.1f}% – {100 * high:.1f}%"
    assert "ann" in browser.find_element("id", "results-table").text
    browser.find_element("id", "export").click()
    wait(browser, lambda d: "preference pairs" in (text_of(d, "export-status") or ""), what="the export")
    shoot("review-results")

    exported = httpx.get(f"{standalone_ui.url}/ui/api/reviews/{review_id}/export", headers=AUTH).text
    (tmp_path / "votes.jsonl").write_text(exported)
    decided = outcomes.count("model_1") + outcomes.count("model_2")
    result = prepare.run(DataPrepareConfig(inputs=[tmp_path / "votes.jsonl"], out=tmp_path / "prefs", dedup={"keep": True},
                                           split={"train": 1.0, "val": 0.0, "test": 0.0}))
    assert result.counts["kind"] == "preference" and result.counts["kept"] == decided
    row = json.loads((tmp_path / "prefs" / "train.jsonl").read_text().splitlines()[0])
    assert set(row) >= {"prompt", "chosen", "rejected"}


XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script><b>bold</b>'


def test_a_model_output_with_html_is_shown_as_text(browser, workspace, shoot):
    from tunesmith.ui.app import build_ui_app
    from tunesmith.ui.config import UiConfig

    hostile = FastAPI()

    @hostile.get("/v1/models")
    async def models():
        return {"data": [{"id": "evil", "parent": None}, {"id": "evil-2", "parent": "evil"}]}

    @hostile.post("/v1/chat/completions")
    async def chat(request: Request):
        if (await request.json()).get("stream"):  # the playground streams: the markup arrives in pieces
            pieces = [XSS[i:i + 7] for i in range(0, len(XSS), 7)]
            events = "".join(f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': p}}]})}\n\n"
                             for p in pieces)
            return Response(events + "data: [DONE]\n\n", media_type="text/event-stream")
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": XSS}, "finish_reason": "stop"}]}

    with ThreadedApp(hostile) as server, ThreadedApp(build_ui_app(UiConfig(workspace=workspace, server=server.url))) as ui:
        open_ui(browser, ui.url, "#/playground", key="")
        browser.find_element("id", "user-message").send_keys(XSS)
        browser.find_element("id", "send").click()
        wait(browser, lambda d: len(d.find_elements("css selector", "#chat-right .role-assistant")) == 1, what="the answer")
        time.sleep(0.3)
        shown = browser.find_element("css selector", "#chat-right .role-assistant .text").get_attribute("textContent")
        assert shown == XSS
        assert browser.find_elements("css selector", "#view img, #view script, #view b") == []
        assert browser.execute_script("return window.__xss === undefined")
        shoot("xss")
