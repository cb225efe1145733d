"""The pairwise LLM judge against a stub OpenAI-compatible server on 127.0.0.1."""

import contextlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tunesmith.errors import ConfigError
from tunesmith.eval.config import JudgeSettings
from tunesmith.eval.judge import RUBRIC, run_judge


@contextlib.contextmanager
def stub_judge(decide):
    """A chat-completions endpoint whose verdict is decide(answer_a, answer_b); records requests."""
    requests = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
            text = body["messages"][1]["content"]
            a = re.search(r"## Answer A\n(.*?)\n\n## Answer B", text, re.S).group(1)
            b = re.search(r"## Answer B\n(.*)$", text, re.S).group(1)
            reply = {"choices": [{"message": {"role": "assistant", "content": f"Reason.\n[[{decide(a, b)}]]"}}]}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", requests
    finally:
        server.shutdown()
        server.server_close()


PROMPTS = [[{"role": "user", "content": f"question {i}"}] for i in range(3)]
REFS = ["good answer"] * 3


def test_each_pair_is_asked_in_both_orders_and_the_better_answer_wins(monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "secret")
    def decide(a, b):
        return "TIE" if ("good" in a) == ("good" in b) else "A" if "good" in a else "B"

    with stub_judge(decide) as (url, requests):
        result = run_judge(JudgeSettings(url=url, model="judge", api_key_env="JUDGE_KEY"), PROMPTS, REFS,
                           ["good answer", "bad", "good answer"], ["bad", "good answer", "good answer"])
    assert len(requests) == 6  # two orders per pair
    assert all(r["path"] == "/v1/chat/completions" and r["auth"] == "Bearer secret" for r in requests)
    assert requests[0]["body"]["messages"][0]["content"] == RUBRIC
    assert [v["winner"] for v in result["verdicts"]] == ["tuned", "base", "tie"]
    assert (result["tuned_wins"], result["base_wins"], result["ties"]) == (1, 1, 1)
    assert result["position_consistency"] == 1.0


def test_position_bias_cancels_out():
    with stub_judge(lambda a, b: "A") as (url, _):  # always prefers whatever it reads first
        result = run_judge(JudgeSettings(url=url, model="judge"), PROMPTS, REFS, ["x"] * 3, ["y"] * 3)
    assert result["ties"] == 3 and result["tuned_wins"] == 0 and result["base_wins"] == 0
    assert result["position_consistency"] == 0.0


def test_unreachable_judge_is_a_user_error():
    with stub_judge(lambda a, b: "A") as (url, _):
        pass  # server closed again: the port now refuses connections
    with pytest.raises(ConfigError, match="cannot reach the judge"):
        run_judge(JudgeSettings(url=url, model="judge", timeout_s=5), PROMPTS[:1], REFS[:1], ["x"], ["y"])
