"""Find and redact personal data and secrets in example text.

Each kind is a regular expression for the shape plus, where the shape alone would also catch
ordinary text, a check of the value itself: credit-card numbers must pass the Luhn checksum and
start like a real card; IBANs must have their country's length and pass the mod-97 check; SSNs
must not use the numbers the SSA never issues; IPv6 candidates must parse. So an order number
of 16 digits, a time like 12:30:45 or a version like v1.2.3.4 survives.

Written by hand because the libraries that do this (Presidio, scrubadub) pull in spaCy models
that cannot be installed offline; these patterns cover the kinds the data stage promises.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

PLACEHOLDERS = {
    "private_key": "<PRIVATE_KEY>",
    "secret": "<SECRET>",
    "email": "<EMAIL>",
    "iban": "<IBAN>",
    "credit_card": "<CREDIT_CARD>",
    "ssn": "<SSN>",
    "ipv6": "<IPV6>",
    "ipv4": "<IPV4>",
    "phone": "<PHONE>",
}
KINDS: tuple[str, ...] = tuple(PLACEHOLDERS)

# IBAN length per country (ISO 13616 registry), so an uppercase code that happens to pass
# mod-97 but has the wrong length for its country is not taken for an account number.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        n = int(char)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _card_prefix(digits: str) -> bool:
    """Issuer ranges of Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay and Maestro."""
    if digits[0] in "3456":
        return True
    return digits[0] == "2" and 2221 <= int(digits[:4]) <= 2720


# How card numbers are grouped when written with spaces or dashes (Visa/Mastercard 4-4-4-4,
# Amex 4-6-5, Diners 4-6-4, 19-digit cards 4-4-4-4-3); other groupings are other numbers.
_CARD_GROUPS = frozenset({(4, 4, 4, 4), (4, 6, 5), (4, 6, 4), (4, 4, 4, 4, 3)})


def _card(text: str) -> int:
    groups = tuple(len(g) for g in re.split(r"[ -]", text))
    digits = re.sub(r"[ -]", "", text)
    if len(groups) > 1 and groups not in _CARD_GROUPS:
        return 0
    if 13 <= len(digits) <= 19 and _card_prefix(digits) and luhn_valid(digits):
        return len(text)
    return 0


def iban_valid(compact: str) -> bool:
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _iban(text: str) -> int:
    """Length of the longest prefix (cut at a space) that is a valid IBAN, or 0.

    The pattern may run on into following uppercase words ("... 00 SSN"), so shorter
    prefixes are tried too.
    """
    cuts = [len(text)] + [m.start() for m in re.finditer(" ", text)][::-1]
    for cut in cuts:
        if iban_valid(text[:cut].replace(" ", "")):
            return cut
    return 0


def _ipv6(text: str) -> int:
    if sum(1 for group in text.split(":") if group) < 2:
        return 0  # "::" alone or "a::" are punctuation far more often than addresses
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return 0
    return len(text)


def _has_digit(text: str) -> int:
    return len(text) if any(c.isdigit() for c in text) else 0


def _phone(text: str) -> int:
    digits = sum(c.isdigit() for c in text)
    return len(text) if 8 <= digits <= 15 else 0


@dataclass(frozen=True)
class Detector:
    kind: str
    pattern: re.Pattern[str]
    # Returns how many leading characters of a match are really this kind (0: none are).
    check: Callable[[str], int] | None
    # A cheap test a text must pass before the pattern is run at all.
    gate: Callable[[str], bool]
    # The fewest digits a finding of this kind holds: texts with fewer skip the pattern (most
    # texts hold few digits, and the digit patterns are the costly ones).
    min_digits: int = 0


_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# Where a secret can start (each alternative of the secret pattern's first characters) and an
# IBAN's country code and check digits: searched before the full patterns run.
_SECRET_PREFIX = re.compile(r"sk-|[spr]k_(?:live|test)_|gh[pousr]_|github_pat_|AKIA|ASIA|xox[abposr]-|AIza|hf_|"
                            r"glpat-|eyJ")
_IBAN_START = re.compile(r"[A-Z]{2}\d\d")

DETECTORS: tuple[Detector, ...] = (
    Detector("private_key", re.compile(
        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?:.*?-----END [A-Z0-9 ]*PRIVATE KEY-----|.*\Z)", re.S),
        None, lambda t: "PRIVATE KEY-----" in t),
    Detector("secret", re.compile(
        r"\b(?:sk-(?:proj-|ant-(?:api\d\d-)?)?[A-Za-z0-9_-]{20,}"
        r"|(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"
        r"|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}"
        r"|(?:AKIA|ASIA)[0-9A-Z]{16}"
        r"|xox[abposr]-[A-Za-z0-9-]{10,}"
        r"|AIza[0-9A-Za-z_-]{35}"
        r"|hf_[A-Za-z0-9]{30,}|glpat-[A-Za-z0-9_-]{20,}"
        r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"),
        _has_digit, lambda t: _SECRET_PREFIX.search(t) is not None, min_digits=1),
    Detector("email", re.compile(
        r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}(?![\w-])"),
        None, lambda t: "@" in t),
    Detector("iban", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"), _iban,
             lambda t: _IBAN_START.search(t) is not None, min_digits=2),
    Detector("credit_card", re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])"), _card, lambda t: True,
             min_digits=13),
    Detector("ssn", re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])"),
             None, lambda t: "-" in t, min_digits=9),
    Detector("ipv6", re.compile(
        r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:" + _OCTET + r"(?:\." + _OCTET + r"){3}|[0-9A-Fa-f]{1,4})?"
        r"(?![\w:]|\.\d)"),
        _ipv6, lambda t: "::" in t or t.count(":") >= 7),
    Detector("ipv4", re.compile(r"(?<![\w.])" + _OCTET + r"(?:\." + _OCTET + r"){3}(?!\w|\.\d)"),
             None, lambda t: "." in t, min_digits=4),
    Detector("phone", re.compile(
        # Not part of a longer run of digit groups (account numbers, IBAN tails): (?<!\d[ .-]).
        r"(?<![\w+])(?<!\d[ .-])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?![\w-]|[ .-]\d)"  # international
        r"|(?<![\w.+-])(?<!\d[ .-])\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}(?![\w-]|[ .-]\d)"  # North American 3-3-4
        r"|(?<![\w.+-])(?<!\d[ .-])\(?0\d{1,4}\)?[ -]\d{3,4}[ -]\d{3,4}(?![\w-]|[ .-]\d)"),  # trunk 0
        _phone, lambda t: True, min_digits=8),
)

_DIGIT = re.compile(r"\d")


def redact(text: str, counts: Counter[str]) -> str:
    """`text` with every finding replaced by its kind's placeholder; adds to `counts` per kind."""
    digits = len(_DIGIT.findall(text))
    for detector in DETECTORS:
        if digits < detector.min_digits or not detector.gate(text):
            continue
        placeholder = PLACEHOLDERS[detector.kind]

        def replace(match: re.Match[str], detector: Detector = detector, placeholder: str = placeholder) -> str:
            found = match.group(0)
            keep = detector.check(found) if detector.check else len(found)
            if not keep:
                return found
            counts[detector.kind] += 1
            return placeholder + found[keep:]

        text = detector.pattern.sub(replace, text)
    return text


def redact_value(value: Any, counts: Counter[str]) -> Any:
    if isinstance(value, str):
        return redact(value, counts)
    if isinstance(value, list):
        return [redact_value(v, counts) for v in value]
    if isinstance(value, dict):
        return {k: redact_value(v, counts) for k, v in value.items()}
    return value


def redact_row(row: dict[str, Any]) -> tuple[dict[str, Any], Counter[str]]:
    """A copy of a schema row with PII redacted in every text (contents, tool-call arguments)."""
    counts: Counter[str] = Counter()
    out = dict(row)
    if "text" in row:
        out["text"] = redact(row["text"], counts)
    for field in ("messages", "prompt", "chosen", "rejected"):
        if field in row:
            out[field] = [_redact_message(m, counts) for m in row[field]]
    return out, counts


def _redact_message(message: dict[str, Any], counts: Counter[str]) -> dict[str, Any]:
    out = dict(message)
    out["content"] = redact(message["content"], counts)
    if "tool_calls" in message:
        out["tool_calls"] = redact_value(message["tool_calls"], counts)
    return out
