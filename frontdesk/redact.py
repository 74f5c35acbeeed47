"""Masking personal data in what the admin CLI prints and exports: e-mail addresses, card
numbers (13–19 digits that pass the Luhn check) and phone numbers. What is stored is not changed.

Used by ``--redact`` (or ``FRONTDESK_REDACT=1``) on every command that shows message text.
"""

from __future__ import annotations

import re

EMAIL = "[email]"
CARD = "[card]"
PHONE = "[phone]"

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# 13–19 digits, optionally in groups split by single spaces or dashes
_CARD = re.compile(r"(?<![\w+])\d(?:[ -]?\d){12,18}(?!\w)")
# An optional +country code, then digits in groups split by spaces, dots, dashes or brackets
_PHONE = re.compile(r"(?<![\w+])(?:\+|\(\d)?\d[\d ().-]{5,}\d(?!\w)")
_DIGIT = re.compile(r"\d")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group())
    return CARD if _luhn(digits) else match.group()


def _phone(match: re.Match[str]) -> str:
    found = match.group()
    digits = re.sub(r"\D", "", found)
    international = found.startswith("+")
    if _DATE.fullmatch(found.strip()) or not (7 if international else 9) <= len(digits) <= 15:
        return found
    return PHONE


def redact(text: str) -> str:
    """``text`` with e-mail addresses, card numbers and phone numbers masked."""
    if "@" in text:
        text = _EMAIL.sub(EMAIL, text)
    if _DIGIT.search(text) is None:
        return text
    text = _CARD.sub(_card, text)
    return _PHONE.sub(_phone, text)
