"""Masking personal data in what the admin CLI prints and exports: e-mail addresses, card
numbers (13–19 digits that pass the Luhn check) and phone numbers. What is stored is not changed.

Used by ``--redact`` (or ``FRONTDESK_REDACT=1``) on every command that shows message text. Every
free-text field of a record (``FREE_TEXT``: the text, names, the chat, the error) is masked, and
masked before anything else is done to it (highlighting, cropping), so that neither can undo it.
Ids, platforms, roles, figures and times are shown as they are.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

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


def unchanged(text: str) -> str:
    """What is shown without ``--redact``: the text as it is."""
    return text


# The fields of a stored record that can hold what a person typed or is called
FREE_TEXT = frozenset({"content", "user_name", "external_key", "chat", "error", "last_message"})


def masked_record(record: Any, shown: Callable[[str], str]) -> dict[str, Any]:
    """A dataclass record as a dict, with ``shown`` (``redact``, or no change) applied to each of
    its free-text fields."""
    fields = {name: getattr(record, name) for name in record.__dataclass_fields__}
    for name in FREE_TEXT.intersection(fields):
        if isinstance(fields[name], str):
            fields[name] = shown(fields[name])
    return fields
