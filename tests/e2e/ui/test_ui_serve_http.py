"""/ui on a live `tunesmith serve` (embedded model, one adapter) and a standalone UI pointed at
it, over plain HTTP: what is public, what needs the key, and that the playground's answers and
rendered prompts are the server's own."""

from __future__ import annotations

import httpx
import pytest
from ui_helpers import ThreadedApp
from serve_helpers import LiveServer, build_adapter, metric

from tunesmith.chat.templates import render_prompt_text
from tunesmith.serve.config import ServeConfig
from tunesmith.ui.app import build_ui_app
from tunesmith.ui.config import WORKSPACE_ENV, UiConfig

KEY = "http-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a generator?"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui-http")
    build_adapter(root / "runs" / "a1" / "adapter", seed=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(WORKSPACE_ENV, str(root))
        with LiveServer(ServeConfig(adapters={"a1": str(root / "runs" / "a1")}, api_key=KEY)) as live:
            yield live, root


def test_page_is_public_api_needs_the_key(served):
    live, _ = served
    page = httpx.get(f"{live.url}/ui/")
    assert page.status_code == 200 and "assets/js/main.js" in page.text
    assert httpx.get(f"{live.url}/ui/assets/js/chart.js").status_code == 200
    assert httpx.get(f"{live.url}/ui/api/runs").status_code == 401
    runs = httpx.get(f"{live.url}/ui/api/runs", headers=AUTH).json()["runs"]
    assert [r["id"] for r in runs] == ["runs/a1"]


def test_chat_and_rendered_prompt_are_the_servers_own(served):
    live, _ = served
    body = {"model": "a1", "messages": MESSAGES, "temperature": 0, "max_tokens": 24, "seed": 0}
    def chat_requests() -> float:
        text = httpx.get(f"{live.url}/metrics", headers=AUTH).text
        return metric(text, "tunesmith_requests_total", route="/v1/chat/completions", model="a1", status="200")

    before = chat_requests()
    via_ui = httpx.post(f"{live.url}/ui/api/chat", json=body, headers=AUTH, timeout=120).json()["content"]
    direct = httpx.post(f"{live.url}/v1/chat/completions", json=body, headers=AUTH, timeout=120).json()
    assert via_ui == direct["choices"][0]["message"]["content"]
    rendered = httpx.post(f"{live.url}/ui/api/render", json={"model": "a1", "messages": MESSAGES}, headers=AUTH).json()
    expected = render_prompt_text(live.state.resolve("a1").tokenizer, MESSAGES)
    assert rendered["text"] == expected and rendered["tokens"] == direct["usage"]["prompt_tokens"]
    # The UI's request went through the server's own middleware (counted like any client's).
    assert chat_requests() == before + 2
    assert httpx.post(f"{live.url}/ui/api/chat", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401


def test_standalone_ui_renders_through_the_servers_own_tokenizers(served):
    live, root = served
    with ThreadedApp(build_ui_app(UiConfig(workspace=root, server=f"{live.url}/v1", api_key=KEY))) as ui:
        for model in ("a1", "tunesmith-demo-4m"):
            rendered = httpx.post(f"{ui.url}/ui/api/render", json={"model": model, "messages": MESSAGES},
                                  headers=AUTH, timeout=60).json()
            assert rendered["text"] == render_prompt_text(live.state.resolve(model).tokenizer, MESSAGES)
        missing = httpx.post(f"{ui.url}/ui/api/chat", headers=AUTH, json={"model": "nope", "messages": MESSAGES})
        assert missing.status_code == 404 and "nope" in missing.json()["error"]["message"]


def test_browser_tests_skip_with_the_install_line_when_chromium_is_absent(monkeypatch, tmp_path):
    import ui_helpers

    monkeypatch.setattr(ui_helpers, "CHROMIUM", tmp_path / "chromium")
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium chromium-driver"):
        ui_helpers.require_browser()
