"""Each kind of personal data is found and replaced by its placeholder; look-alikes survive."""

from __future__ import annotations

from collections import Counter

import pytest

from tunesmith.data.pii import KINDS, PLACEHOLDERS, luhn_valid, redact, redact_row

FOUND = {
    "email": ["Write to jane.doe+tickets@mail.example.co.uk today.", "Mail: J_Smith@example.com"],
    "phone": ["Call +1 415-555-0132, please.", "Office: (415) 555-0132", "Ring 020 7946 0958 after 5",
              "Mobile +44 20 7946 0958."],
    "credit_card": ["Card 4111 1111 1111 1111 was charged.", "Amex 3782 822463 10005 on file",
                    "paid with 5555555555554444", "card 4111-1111-1111-1111."],
    "ipv4": ["Server 192.168.10.24 is down.", "ping 8.8.8.8."],
    "ipv6": ["Host 2001:db8::8a2e:370:7334 refuses", "link-local fe80::1.", "mapped ::ffff:10.1.2.3 here"],
    "iban": ["IBAN DE89 3704 0044 0532 0130 00 please.", "to GB82WEST12345698765432 now",
             "IBAN DE89 3704 0044 0532 0130 00 SSN follows"],
    "ssn": ["SSN 123-45-6789 is on file."],
    "secret": ["key sk-proj-Abc123Def456Ghi789Jkl012Mno345 leaked", "AKIAIOSFODNN7EXAMPLE in config",
               "token ghp_" + "a1" * 18 + " expired", "stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc",
               "slack xoxb-1234567890-abcdefghij", "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N",
               "hf hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"],
    "private_key": ["-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----",
                    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA (cut off)"],
}

# Text that looks like personal data to a careless pattern, and is not.
SURVIVES = [
    "My order number is 1234567890123456.",          # 16 digits, no card prefix
    "Card 4111 1111 1111 1112 is invalid.",          # fails Luhn
    "Account 3704 0044 0532 0130 01 is closed",      # grouped like no card, and no valid IBAN
    "IBAN DE89 3704 0044 0532 0130 01 fails mod-97",
    "Version 999.1.1.1 and 1.2.3 and v1.2.3.4 and 1.2.3.4.5",
    "Meeting at 12:30:45, MAC 00:1a:2b:3c:4d:5e, std::vector and a::",
    "SSNs never start 000-12-3456 or 666-12-3456, never have 123-00-4567",
    "Order #82963 on 2024-01-15 cost $73.37, ticket 12-345",
    "Write to user@localhost or @support on twitter",
    "we use sk-learn-style-pipelines-everywhere and task-manager",
    "Reference 123456789 and 0123 456 78 90 1",
    "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----",
]


@pytest.mark.parametrize("kind, text", [(kind, text) for kind, texts in FOUND.items() for text in texts])
def test_each_kind_is_found_and_replaced(kind, text):
    counts: Counter[str] = Counter()
    out = redact(text, counts)
    assert counts == Counter({kind: 1}), (text, out)
    assert PLACEHOLDERS[kind] in out


@pytest.mark.parametrize("text", SURVIVES)
def test_look_alikes_survive(text):
    counts: Counter[str] = Counter()
    assert redact(text, counts) == text
    assert not counts


def test_every_kind_has_a_positive_case():
    assert set(FOUND) == set(KINDS)


def test_exact_replacements_keep_the_surrounding_text():
    counts: Counter[str] = Counter()
    text = "Email jane@example.com or call +1 415-555-0132; card 4111 1111 1111 1111, SSN 123-45-6789."
    assert redact(text, counts) == "Email <EMAIL> or call <PHONE>; card <CREDIT_CARD>, SSN <SSN>."
    assert counts == Counter({"email": 1, "phone": 1, "credit_card": 1, "ssn": 1})


def test_luhn():
    assert luhn_valid("4111111111111111") and luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112") and not luhn_valid("1234567890123456")


def test_redact_row_covers_every_text_and_leaves_the_input_alone():
    call = {"type": "function", "function": {"name": "mail", "arguments": {"to": "bo@example.net"}}}
    row = {"messages": [{"role": "system", "content": "Admin is ann@example.com"},
                        {"role": "user", "content": "Send it"},
                        {"role": "assistant", "content": "", "tool_calls": [call]}]}
    out, counts = redact_row(row)
    assert counts == Counter({"email": 2})
    assert out["messages"][0]["content"] == "Admin is <EMAIL>"
    assert out["messages"][2]["tool_calls"][0]["function"]["arguments"] == {"to": "<EMAIL>"}
    assert row["messages"][0]["content"] == "Admin is ann@example.com"
    pair, counts = redact_row({"prompt": [{"role": "user", "content": "ip 10.0.0.1"}],
                               "chosen": [{"role": "assistant", "content": "ok"}],
                               "rejected": [{"role": "assistant", "content": "ssn 123-45-6789"}]})
    assert counts == Counter({"ipv4": 1, "ssn": 1}) and pair["rejected"][0]["content"] == "ssn <SSN>"
    text, counts = redact_row({"text": "call (415) 555-0132"})
    assert text == {"text": "call <PHONE>"}


def test_the_cheap_gates_never_skip_a_finding(monkeypatch):
    """Each detector's gate and digit minimum only save time: with every gate open, redaction
    gives the same text and counts on every positive case, every look-alike, and mixtures."""
    import dataclasses
    import random

    from tunesmith.data import pii

    texts = [t for cases in FOUND.values() for t in cases] + SURVIVES
    rng = random.Random(0)
    texts += [" ".join(rng.sample(texts, 3)) for _ in range(200)]
    gated = [(redact(t, c := Counter()), c) for t in texts]
    open_gates = tuple(dataclasses.replace(d, gate=lambda t: True, min_digits=0) for d in pii.DETECTORS)
    monkeypatch.setattr(pii, "DETECTORS", open_gates)
    assert [(redact(t, c := Counter()), c) for t in texts] == gated
