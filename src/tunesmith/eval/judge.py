"""Pairwise LLM judge through any OpenAI-compatible chat-completions endpoint.

Judges prefer whichever answer they read first (or second) more often than chance. Every pair
is therefore asked twice, once with the tuned answer as A and once as B; a model wins only when
the judge picks it in both orders, and a split verdict counts as a tie, so position bias cancels.
The request is plain JSON over HTTP (urllib), which every OpenAI-compatible server accepts
(vLLM, llama.cpp's server, Ollama, `tunesmith serve`, hosted APIs).
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from typing import Any, Sequence

from tunesmith.errors import ConfigError
from tunesmith.eval.config import JudgeSettings

RUBRIC = (
    "You are an impartial judge comparing two answers to the same conversation. Judge which answer "
    "better fulfils the user's last request: correctness first (agreement with the reference answer "
    "when one is given), then completeness, then following the requested format exactly, then "
    "concision. Ignore answer length except where it hurts these criteria, and ignore the order "
    "in which the answers are shown. Reply with a short reason and then exactly one verdict on the "
    "last line: [[A]] if answer A is better, [[B]] if answer B is better, [[TIE]] if they are "
    "equally good or equally bad."
)
_VERDICT = re.compile(r"\[\[(A|B|TIE)\]\]")


def _endpoint(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else f"{url}/chat/completions"


def _conversation_text(prompt: Sequence[dict[str, Any]]) -> str:
    return "\n\n".join(f"[{m.get('role')}]\n{m.get('content') or ''}" for m in prompt)


def judge_message(prompt: Sequence[dict[str, Any]], reference: str | None, answer_a: str, answer_b: str) -> str:
    parts = [f"## Conversation\n{_conversation_text(prompt)}"]
    if reference is not None:
        parts.append(f"## Reference answer\n{reference}")
    parts.append(f"## Answer A\n{answer_a}")
    parts.append(f"## Answer B\n{answer_b}")
    return "\n\n".join(parts)


class Judge:
    def __init__(self, settings: JudgeSettings):
        if not settings.url or not settings.model:
            raise ConfigError("the judge needs both judge.url and judge.model",
                              hint="pass --judge-url http://host:port/v1 --judge-model NAME")
        self.settings = settings
        self.endpoint = _endpoint(settings.url)
        self.api_key = os.environ.get(settings.api_key_env, "")

    def verdict(self, prompt, reference, answer_a: str, answer_b: str) -> str:
        """"A", "B" or "TIE" from one judge call (an unparseable reply counts as a tie)."""
        body = {
            "model": self.settings.model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": RUBRIC},
                {"role": "user", "content": judge_message(prompt, reference, answer_a, answer_b)},
            ],
        }
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.endpoint, data=json.dumps(body).encode(), headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout_s) as response:
                reply = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            raise ConfigError(f"the judge at {self.endpoint} answered HTTP {exc.code}: {exc.read()[:300]!r}",
                              hint="check --judge-model and the API key variable (judge.api_key_env)") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise ConfigError(f"cannot reach the judge at {self.endpoint}: {exc}",
                              hint="start the server or fix --judge-url (an OpenAI-compatible base URL ending in /v1)"
                              ) from None
        except json.JSONDecodeError:
            raise ConfigError(f"the judge at {self.endpoint} did not answer JSON",
                              hint="--judge-url must point at an OpenAI-compatible API") from None
        try:
            text = reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise ConfigError(f"the judge at {self.endpoint} answered without choices[0].message.content") from None
        found = _VERDICT.findall(text)
        return found[-1] if found else "TIE"

    def compare(self, prompt, reference, tuned: str, base: str) -> dict[str, Any]:
        """Ask in both orders; the tuned answer wins only if preferred both times."""
        first = self.verdict(prompt, reference, tuned, base)   # tuned is A
        second = self.verdict(prompt, reference, base, tuned)  # tuned is B
        tuned_votes = (first == "A") + (second == "B")
        base_votes = (first == "B") + (second == "A")
        if tuned_votes == 2:
            outcome = "tuned"
        elif base_votes == 2:
            outcome = "base"
        else:
            outcome = "tie"
        return {"tuned_first": first, "tuned_second": second, "winner": outcome,
                "consistent": first == {"A": "B", "B": "A", "TIE": "TIE"}[second]}


def run_judge(settings: JudgeSettings, prompts, references, tuned_outputs, base_outputs) -> dict[str, Any]:
    judge = Judge(settings)
    limit = settings.max_examples or len(prompts)
    verdicts = [judge.compare(p, r, t, b) for p, r, t, b in
                list(zip(prompts, references, tuned_outputs, base_outputs))[:limit]]
    n = len(verdicts)
    wins = {k: sum(v["winner"] == k for v in verdicts) for k in ("tuned", "base", "tie")}
    return {
        "model": settings.model, "url": judge.endpoint, "examples": n,
        "tuned_wins": wins["tuned"], "base_wins": wins["base"], "ties": wins["tie"],
        "tuned_win_rate": wins["tuned"] / n if n else 0.0,
        "position_consistency": sum(v["consistent"] for v in verdicts) / n if n else 0.0,
        "verdicts": verdicts,
    }


__all__ = ["RUBRIC", "Judge", "judge_message", "run_judge"]
