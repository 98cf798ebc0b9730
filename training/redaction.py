"""Replace personal data (emails, phone numbers, card numbers, IP addresses...) with placeholders.

Pure functions on text; the capture sink calls them before anything is written and the dataset
builder calls them again on seed data. Patterns err towards redacting too much.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass


def _luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}|\d{2}[./-]\d{2}[./-]\d{4}")


def _phone(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = sum(char.isdigit() for char in text)
    if _DATE.fullmatch(text.strip()) or not 7 <= digits <= 15:
        return text
    return "[PHONE]"


def _ipv6(match: re.Match[str]) -> str:
    try:
        ipaddress.IPv6Address(match.group(0))
    except ValueError:
        return match.group(0)
    return "[IP]"


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return "[CARD]" if _luhn_valid(digits) else match.group(0)


@dataclass(frozen=True)
class PiiPattern:
    """One kind of personal data: its name, a regex, and what replaces a match."""

    name: str
    pattern: re.Pattern[str]
    replace: str | Callable[[re.Match[str]], str]


# Order matters: cards before phone numbers (a card number also looks like a long phone number),
# IBANs before cards, IPv6 before the generic number patterns.
PII_PATTERNS: tuple[PiiPattern, ...] = (
    PiiPattern("email", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"), "[EMAIL]"),
    PiiPattern(
        "iban",
        re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?\b"),
        "[IBAN]",
    ),
    PiiPattern("card", re.compile(r"\b\d(?:[ -]?\d){12,18}\b"), _card),
    PiiPattern(
        "ipv4",
        re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"),
        "[IP]",
    ),
    PiiPattern(
        "ipv6",
        re.compile(r"(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])"),
        _ipv6,
    ),
    PiiPattern("ssn", re.compile(r"\b\d{3}-\d{2}-\d{4}\b"), "[SSN]"),
    PiiPattern(
        "phone",
        re.compile(
            r"(?<![\w+])(?:\+?\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){2,3}\b"
        ),
        _phone,
    ),
)


def redact(text: str, patterns: tuple[PiiPattern, ...] = PII_PATTERNS) -> str:
    """`text` with every match of `patterns` replaced by its placeholder."""
    for pii in patterns:
        text = pii.pattern.sub(pii.replace, text)
    return text
