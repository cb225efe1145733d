"""Fixed probe inputs for merge parity, GGUF verification and template parity.

They are small on purpose (every export runs them) and cover what breaks conversions: a system
turn, several turns, JSON, code, non-ASCII text, runs of spaces, tabs and blank lines.
"""

from __future__ import annotations

from typing import Any

PROBE_CONVERSATIONS: list[list[dict[str, Any]]] = [
    [
        {"role": "user", "content": "Hello! Can you help me reset my password?"},
        {"role": "assistant", "content": "Of course. Open Settings, choose Security, then Reset password."},
    ],
    [
        {"role": "system", "content": "You are a support triage assistant. Answer with JSON only."},
        {"role": "user", "content": "Please triage this ticket:\n\nMy invoice #4411 was charged twice!!"},
        {"role": "assistant", "content": '{"category": "billing", "priority": "high", "summary": "Double charge."}'},
    ],
    [
        {"role": "user", "content": "What does `json.dumps` do?"},
        {"role": "assistant", "content": "It serialises a Python object to a JSON formatted str."},
        {"role": "user", "content": "And json.loads?"},
        {"role": "assistant", "content": "The reverse: it parses a JSON document into Python objects."},
    ],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "  Café ☕ — naïve façade, 東京 🚀\n\n\tTabs and  double  spaces  "},
        {"role": "assistant", "content": "def add(a, b):\n    return a + b  # 12345 + 0.5e-3\n"},
    ],
]

PROBE_TEXTS: list[str] = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog. 0123456789",
    "  leading spaces\tand tabs\r\nwindows newlines\n\n\nthree blank lines",
    "Unicode: café, naïve, 東京, emoji 🚀, math ∑ x², Ελληνικά, русский",
    "def add(a: int, b: int) -> int:\n    return a + b\n",
    '{"category": "billing", "priority": "urgent", "summary": "Charged $209.33 twice."}',
    "don't won't I'm you'll they've we'd it's",
    "",
]


def probe_prompts() -> list[list[dict[str, Any]]]:
    """Every prompt of the probe conversations that precedes an assistant turn."""
    prompts = []
    for conversation in PROBE_CONVERSATIONS:
        for i, message in enumerate(conversation):
            if message["role"] == "assistant":
                prompts.append(conversation[:i])
    return prompts


__all__ = ["PROBE_CONVERSATIONS", "PROBE_TEXTS", "probe_prompts"]
