"""The demo task: support-ticket triage.

A customer ticket (free text, with the noise real tickets have) goes in; a JSON object with the
ticket's `category`, `priority` and a one-line `summary` comes out. Category and priority are
measured exactly (accuracy, macro-F1), the summary with overlap metrics, so an evaluation can
say plainly whether a fine-tune worked.

The generator is seeded: the same config writes byte-identical files. It writes
- `train.jsonl`: OpenAI chat JSONL; some rows carry a system prompt, some are multi-turn
  (the customer escalates or de-escalates and the assistant re-triages);
- `test.jsonl`: held-out conversations, none of whose tickets appears in `train.jsonl`;
- `dirty.jsonl`: realistic good rows mixed with rows that break each validation rule listed
  in `DIRTY_RULES`, plus rows with personal data for the cleaning step.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from tunesmith.data.config import DemoDataConfig

CATEGORIES = ("billing", "technical", "account", "shipping", "feature_request", "security")
PRIORITIES = ("low", "medium", "high", "urgent")

SYSTEM_PROMPTS = (
    "You are a support triage assistant. Read the ticket and reply with JSON only: "
    '{"category": ..., "priority": ..., "summary": ...}.',
    "Classify customer support tickets. Categories: billing, technical, account, shipping, "
    "feature_request, security. Priorities: low, medium, high, urgent. Answer in JSON.",
    "You triage tickets for the Acme help desk. Output one JSON object with category, priority "
    "and a one-line summary.",
    "Triage the following ticket.",
)

USER_FORMATS = (
    "{ticket}",
    "{ticket}",
    "Ticket:\n{ticket}",
    "Please triage this ticket:\n\n{ticket}",
    "Subject: {subject}\n\n{ticket}",
    "New ticket from a customer:\n{ticket}",
)

PRODUCTS = ("Acme Cloud", "the mobile app", "the desktop client", "Acme Pay", "the web dashboard",
            "the API", "Acme Backup", "the smart thermostat")
DEVICES = ("iPhone 15", "Pixel 8", "Windows 11 laptop", "MacBook Air", "Galaxy S23", "iPad", "Chromebook")
BROWSERS = ("Chrome", "Firefox", "Safari", "Edge")
CARRIERS = ("UPS", "FedEx", "DHL", "USPS", "the courier")
PLANS = ("Basic", "Pro", "Team", "Enterprise")
FEATURES = ("dark mode", "CSV export", "two-factor login with hardware keys", "a bulk edit option",
            "calendar sync", "an offline mode", "custom report filters", "Slack notifications")
NAMES = ("Maria", "John", "Aisha", "Wei", "Carlos", "Priya", "Tom", "Olga", "Kenji", "Fatima")

# category -> list of (ticket body variants, summary template, subject)
ISSUES: dict[str, list[tuple[tuple[str, ...], str, str]]] = {
    "billing": [
        (("I was charged twice for order #{order}. Both charges of {amount} show on my card.",
          "my card got billed 2 times for order {order}, {amount} each",
          "Why do I see two payments of {amount} for order #{order}?"),
         "Charged twice for order #{order} ({amount}).", "Double charge"),
        (("My invoice for {month} says {amount} but my {plan} plan should be cheaper.",
          "The {month} invoice is wrong, you billed {amount} for the {plan} plan.",
          "invoice for {month} = {amount}?? thats not the {plan} price"),
         "Invoice for {month} shows wrong amount {amount} on {plan} plan.", "Wrong invoice"),
        (("I cancelled my subscription last month but you still charged me {amount}.",
          "Still getting billed {amount} after cancelling, please stop charging me.",
          "cancelled weeks ago and was charged {amount} again"),
         "Charged {amount} after cancelling subscription.", "Charged after cancel"),
    ],
    "technical": [
        (("{product} crashes every time I open it on my {device}.",
          "Since the last update {product} closes immediately on my {device}.",
          "{product} keeps crashing on {device}, reinstalling did not help"),
         "{product} crashes on launch on {device}.", "App crash"),
        (("I get error {code} when I try to upload files in {product}.",
          "Uploads fail with error code {code} in {product}.",
          "error {code} on every upload ({product})"),
         "Uploads fail with error {code} in {product}.", "Upload error"),
        (("The web dashboard does not load in {browser}, it is just a blank page.",
          "Blank white screen when opening the dashboard with {browser}.",
          "dashboard wont load in {browser} at all"),
         "Dashboard shows a blank page in {browser}.", "Dashboard blank"),
    ],
    "account": [
        (("I can't log in, the password reset email never arrives.",
          "Password reset link never shows up in my inbox so I am locked out.",
          "no reset email, cant get into my account"),
         "Password reset email not arriving; cannot log in.", "Cannot log in"),
        (("Please change the email address on my account, I lost access to the old one.",
          "I need to update the email on my profile, the old address is gone.",
          "how do i change my account email"),
         "Wants to change the account email address.", "Change email"),
        (("Please delete my account and all my data.",
          "I want my account closed and my personal data removed.",
          "close my account pls"),
         "Requests account deletion and data removal.", "Delete account"),
    ],
    "shipping": [
        (("My order #{order} was supposed to arrive {days} days ago and tracking has not moved.",
          "Order {order} is {days} days late, {carrier} tracking is stuck.",
          "where is my package?? order #{order}, {days} days late"),
         "Order #{order} is {days} days late; tracking stuck.", "Late delivery"),
        (("The package for order #{order} arrived damaged, the box was crushed.",
          "Order {order} came broken, {carrier} must have dropped it.",
          "got order {order} today and the item is damaged"),
         "Order #{order} arrived damaged.", "Damaged item"),
        (("I received the wrong item in order #{order}.",
          "Order {order} contains someone else's item, not what I bought.",
          "wrong product in my order {order}"),
         "Wrong item received in order #{order}.", "Wrong item"),
    ],
    "feature_request": [
        (("It would be great if {product} had {feature}.",
          "Feature request: please add {feature} to {product}.",
          "any plans for {feature} in {product}?"),
         "Requests {feature} in {product}.", "Feature request"),
        (("Could you add {feature}? We would use it every day.",
          "Our team keeps asking for {feature}, please consider it.",
          "pls add {feature}"),
         "Requests {feature}.", "Suggestion"),
    ],
    "security": [
        (("I got an email saying someone logged into my account from {country}. That was not me.",
          "Someone signed in to my account from {country} and changed my settings.",
          "suspicious login from {country} on my account!!"),
         "Unrecognised login from {country}; possible account takeover.", "Suspicious login"),
        (("I think I found a security vulnerability in {product}: other users' files are visible.",
          "{product} shows me files that belong to other customers. This looks like a data leak.",
          "i can see other peoples data in {product}"),
         "Possible data leak: other users' files visible in {product}.", "Data exposure"),
        (("My API key was posted publicly by mistake, please revoke it.",
          "We leaked an API key in a public repo, need it rotated now.",
          "api key leaked, revoke it"),
         "Leaked API key needs to be revoked.", "Leaked key"),
    ],
}

COUNTRIES = ("Brazil", "Russia", "Vietnam", "Nigeria", "Germany", "Canada", "India")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")

# Priority is signalled in the text, so a model can learn it.
PRIORITY_CUES: dict[str, tuple[str, ...]] = {
    "low": ("No rush on this.", "Whenever you get a chance.", "Just a heads-up, not urgent.",
            "Low priority for us.", "no hurry"),
    "medium": ("Could you look into this?", "Would appreciate a reply this week.",
               "Please let me know what to do.", "Thanks for checking."),
    "high": ("This is blocking my work.", "Please fix this soon, my team depends on it.",
             "I need this resolved today.", "This is a big problem for us."),
    "urgent": ("URGENT: this affects all our customers right now!", "This is an emergency, please respond immediately.",
               "Our business is losing money every minute.", "ASAP please, everything is down!!"),
}
ALLOWED_PRIORITIES = {
    "security": ("high", "urgent"),
    "feature_request": ("low", "medium"),
}
ESCALATIONS = ("Update: it is getting worse and now the whole team is blocked.",
               "Following up: this is now urgent, customers are complaining.",
               "any update? this is now critical for us")
DEESCALATIONS = ("Never mind, it started working again. Low priority now.",
                 "Update: we found a workaround, so no rush anymore.")

GREETINGS = ("", "", "Hi,", "Hello team,", "hey", "Good morning,", "Dear support,")
SIGNOFFS = ("", "", "Thanks, {name}", "Regards,\n{name}", "-- sent from my phone", "Cheers, {name}", "{name}")


def triage_json(category: str, priority: str, summary: str) -> str:
    """The assistant's answer: compact JSON with keys in a fixed order."""
    return json.dumps({"category": category, "priority": priority, "summary": summary})


def _slots(rng: random.Random) -> dict[str, str]:
    return {
        "order": str(rng.randint(10000, 99999)),
        "amount": f"${rng.randint(5, 400)}.{rng.randint(0, 99):02d}",
        "product": rng.choice(PRODUCTS),
        "device": rng.choice(DEVICES),
        "browser": rng.choice(BROWSERS),
        "carrier": rng.choice(CARRIERS),
        "plan": rng.choice(PLANS),
        "feature": rng.choice(FEATURES),
        "code": f"E{rng.randint(100, 999)}",
        "days": str(rng.randint(2, 14)),
        "country": rng.choice(COUNTRIES),
        "month": rng.choice(MONTHS),
    }


def _typo(word: str, rng: random.Random) -> str:
    if len(word) < 4 or not word.isalpha():
        return word
    i = rng.randrange(len(word) - 1)
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def _noisy(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    if rng.random() < 0.3:
        words = [_typo(w, rng) if rng.random() < 0.08 else w for w in words]
    text = " ".join(words)
    if rng.random() < 0.15:
        text = text.lower()
    if rng.random() < 0.1:
        text = text.replace(". ", ".  ")
    return text


def make_ticket(rng: random.Random) -> tuple[str, str, str, str, str]:
    """Return (ticket text, subject, category, priority, summary)."""
    category = rng.choice(CATEGORIES)
    bodies, summary_tpl, subject = rng.choice(ISSUES[category])
    priority = rng.choice(ALLOWED_PRIORITIES.get(category, PRIORITIES))
    slots = _slots(rng)
    body = rng.choice(bodies).format(**slots)
    cue = rng.choice(PRIORITY_CUES[priority])
    parts = [rng.choice(GREETINGS), _noisy(body, rng) + " " + cue, rng.choice(SIGNOFFS).format(name=rng.choice(NAMES))]
    ticket = "\n".join(p for p in parts if p).strip()
    return ticket, subject, category, priority, summary_tpl.format(**slots)


def make_conversation(rng: random.Random, cfg: DemoDataConfig) -> dict:
    ticket, subject, category, priority, summary = make_ticket(rng)
    messages = []
    if rng.random() < cfg.system_prompt_share:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    user = rng.choice(USER_FORMATS).format(ticket=ticket, subject=subject)
    messages.append({"role": "user", "content": user})
    messages.append({"role": "assistant", "content": triage_json(category, priority, summary)})
    if rng.random() < cfg.multi_turn_share:
        if priority in ("high", "urgent") or rng.random() < 0.5:
            follow, new_priority = rng.choice(DEESCALATIONS), "low"
        else:
            follow, new_priority = rng.choice(ESCALATIONS), "urgent"
        messages.append({"role": "user", "content": follow})
        messages.append({"role": "assistant", "content": triage_json(category, new_priority, summary)})
    return {"messages": messages}


def _user_text(row: dict) -> str:
    return "\n".join(m["content"] for m in row["messages"] if m["role"] == "user")


def generate(cfg: DemoDataConfig) -> tuple[list[dict], list[dict]]:
    """Train and test conversations; no test ticket text occurs in train."""
    rng = random.Random(cfg.seed)
    train: list[dict] = []
    seen: set[str] = set()
    while len(train) < cfg.train_size:
        row = make_conversation(rng, cfg)
        key = _user_text(row)
        if key not in seen:
            seen.add(key)
            train.append(row)
    test: list[dict] = []
    test_rng = random.Random(f"{cfg.seed}-test")
    while len(test) < cfg.test_size:
        row = make_conversation(test_rng, cfg)
        key = _user_text(row)
        if key not in seen:
            seen.add(key)
            test.append(row)
    return train, test


# Each deliberately broken row of dirty.jsonl, named by the validation rule it breaks.
DIRTY_RULES = (
    "invalid_json",
    "not_an_object",
    "missing_messages",
    "bad_message",
    "unknown_role",
    "empty_content",
    "no_assistant_turn",
    "bad_role_order",
    "non_utf8",
    "too_long",
    "duplicate",
)


def dirty_rows(rng: random.Random, cfg: DemoDataConfig) -> list[tuple[str | None, bytes]]:
    """(rule or None for a valid row, raw JSONL line) in file order."""
    def line(obj) -> bytes:
        return json.dumps(obj, ensure_ascii=False).encode("utf-8")

    good = [make_conversation(rng, cfg) for _ in range(12)]
    rows: list[tuple[str | None, bytes]] = [(None, line(g)) for g in good[:6]]
    answer = good[0]["messages"][-1]["content"]
    broken: list[tuple[str, bytes]] = [
        ("invalid_json", b'{"messages": [{"role": "user", "content": "my order never came"}'),
        ("not_an_object", line(["user", "my order never came", "assistant", answer])),
        ("missing_messages", line({"conversation": "my order never came", "reply": answer})),
        ("bad_message", line({"messages": [{"role": "user", "content": ["not", "a", "string"]},
                                           {"role": "assistant", "content": answer}]})),
        ("bad_message", line({"messages": "user: hi / assistant: hello"})),
        ("unknown_role", line({"messages": [{"role": "customer", "content": "refund please"},
                                            {"role": "assistant", "content": answer}]})),
        ("empty_content", line({"messages": [{"role": "user", "content": "   "},
                                             {"role": "assistant", "content": answer}]})),
        ("no_assistant_turn", line({"messages": [{"role": "system", "content": SYSTEM_PROMPTS[0]},
                                                 {"role": "user", "content": "The app crashes on start."}]})),
        ("bad_role_order", line({"messages": [{"role": "assistant", "content": answer},
                                              {"role": "user", "content": "The app crashes on start."}]})),
        ("bad_role_order", line({"messages": [{"role": "user", "content": "The app crashes."},
                                              {"role": "system", "content": SYSTEM_PROMPTS[1]},
                                              {"role": "assistant", "content": answer}]})),
        ("non_utf8", b'{"messages": [{"role": "user", "content": "caf\xe9 order \xff\xfe broken"}, '
                     b'{"role": "assistant", "content": "{}"}]}'),
        ("too_long", line({"messages": [{"role": "user", "content": "Please read my log:\n" + "ERROR timeout at step 1. " * 8000},
                                        {"role": "assistant", "content": answer}]})),
        ("duplicate", line(good[1])),
    ]
    pii_rows = [
        "My email is jane.doe@example.com and my phone is +1 415-555-0132, please call me.",
        "Card 4111 1111 1111 1111 was charged twice. My order number is 1234567890123456.",
        "Server 192.168.10.24 and 2001:db8::8a2e:370:7334 cannot reach the API.",
        "Refund to IBAN DE89 3704 0044 0532 0130 00 please. SSN 123-45-6789 is on file.",
        "Our key sk-proj-Abc123Def456Ghi789Jkl012Mno345 leaked, revoke it.",
    ]
    for text in pii_rows:
        row = {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]}
        rows.append((None, line(row)))
    # A valid row with a message excluded from the loss (weight 0), as OpenAI's format allows.
    weighted = json.loads(json.dumps(good[2]))
    weighted["messages"][-1]["weight"] = 0
    weighted["messages"].extend([{"role": "user", "content": "Thanks! Is it urgent?"},
                                 {"role": "assistant", "content": answer, "weight": 1}])
    rows.append((None, line(weighted)))
    rows.extend(broken)
    rows.extend((None, line(g)) for g in good[6:])
    rng.shuffle(rows)
    return rows


@dataclass
class DemoResult:
    """The files `data demo` wrote, with their row counts."""

    out: Path
    rows: dict[str, int]

    def summary(self) -> str:
        return "\n".join(f"wrote {count:>5} rows  {name}" for name, count in self.rows.items())


def run(cfg: DemoDataConfig) -> DemoResult:
    """Write train.jsonl, test.jsonl, preference_train.jsonl, preference_test.jsonl and dirty.jsonl under
    cfg.out; return rows per file."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = generate(cfg)
    written = {}
    for name, rows in (("train.jsonl", train), ("test.jsonl", test)):
        with open(out / name, "w", encoding="utf-8", newline="\n") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        written[str(out / name)] = len(rows)
    # Preference pairs for DPO after SFT: correct JSON vs a realistic failure (data/preference_demo.py).
    from tunesmith.data.preference_demo import preference_pairs

    for name, rows in (("preference_train.jsonl", train), ("preference_test.jsonl", test)):
        with open(out / name, "w", encoding="utf-8", newline="\n") as fh:
            for pair in preference_pairs(rows, cfg.seed):
                fh.write(json.dumps(pair, ensure_ascii=False) + "\n")
        written[str(out / name)] = len(rows)
    dirty = dirty_rows(random.Random(f"{cfg.seed}-dirty"), cfg)
    with open(out / "dirty.jsonl", "wb") as fh:
        for _, raw in dirty:
            fh.write(raw + b"\n")
    written[str(out / "dirty.jsonl")] = len(dirty)
    return DemoResult(out, written)
