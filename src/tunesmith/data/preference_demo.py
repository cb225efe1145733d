"""Preference pairs for the demo ticket task: the correct JSON answer against a realistic failure.

Each rejected answer is one of the ways a small model gets the task wrong: a wrong priority, a
wrong category, prose around the JSON, a missing field, or a run-on answer that does not stop
after the JSON. The pairs come from the seeded conversations of `tunesmith.data.demo`, so they
are reproducible, and the held-out split uses the demo's test tickets only.
"""

from __future__ import annotations

import json
import random
from typing import Any

from tunesmith.data.demo import ALLOWED_PRIORITIES, CATEGORIES, PRIORITIES

FAILURES = ("wrong_priority", "wrong_category", "prose_around_json", "missing_field", "run_on")


def rejected_answer(answer: str, kind: str, rng: random.Random) -> str:
    """A realistic wrong answer of the given kind for the correct JSON `answer`."""
    fields = json.loads(answer)
    if kind == "wrong_priority":
        options = [p for p in ALLOWED_PRIORITIES.get(fields["category"], PRIORITIES) if p != fields["priority"]]
        options = options or [p for p in PRIORITIES if p != fields["priority"]]
        return json.dumps({**fields, "priority": rng.choice(options)})
    if kind == "wrong_category":
        return json.dumps({**fields, "category": rng.choice([c for c in CATEGORIES if c != fields["category"]])})
    if kind == "prose_around_json":
        lead = rng.choice(("Sure! Here is the triage:\n", "Here's the JSON you asked for: ", "Of course.\n\n"))
        tail = rng.choice(("\nLet me know if you need anything else.", "\n\nHope this helps!", ""))
        return lead + answer + tail
    if kind == "missing_field":
        dropped = rng.choice(("priority", "category", "summary"))
        return json.dumps({k: v for k, v in fields.items() if k != dropped})
    if kind == "run_on":
        return answer + rng.choice(("\n\nThe customer seems frustrated. I would also suggest following up "
                                    "within a day and checking related tickets for the same issue.",
                                    "\nExplanation: the ticket mentions the problem clearly, so the category "
                                    "and priority follow from the text above."))
    raise ValueError(f"unknown failure kind {kind!r}")


def preference_pairs(conversations: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """One pair per conversation: prompt = the turns before its last answer, chosen = that answer,
    rejected = a failure, the kinds taken in turn so each is equally represented."""
    rng = random.Random(f"{seed}-preference")
    pairs = []
    for i, row in enumerate(conversations):
        messages = row["messages"]
        answer = messages[-1]["content"]
        kind = FAILURES[i % len(FAILURES)]
        pairs.append({
            "prompt": messages[:-1],
            "chosen": [{"role": "assistant", "content": answer}],
            "rejected": [{"role": "assistant", "content": rejected_answer(answer, kind, rng)}],
            "meta": {"failure": kind},
        })
    return pairs
