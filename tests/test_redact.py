"""Masking personal data in the admin CLI's output: what is masked, and what is left alone."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from frontdesk.redact import CARD, EMAIL, PHONE, redact


def _luhn_complete(prefix: str) -> str:
    """``prefix`` plus the check digit that makes it pass the Luhn check."""
    for check in "0123456789":
        digits = prefix + check
        total = 0
        for i, ch in enumerate(reversed(digits)):
            n = int(ch) * (2 if i % 2 else 1)
            total += n - 9 if n > 9 else n
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable")


LOCAL = st.text(string.ascii_lowercase + string.digits + "._+-", min_size=1, max_size=20).filter(
    lambda s: s[0].isalnum()
)
DOMAIN = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=12)
CARDS = st.builds(
    _luhn_complete, st.text(string.digits, min_size=15, max_size=15).map(lambda d: "4" + d[1:])
)


@given(LOCAL, DOMAIN, st.sampled_from(["com", "co.uk", "nl", "io"]))
def test_any_email_address_is_masked(local: str, domain: str, tld: str) -> None:
    address = f"{local}@{domain}.{tld}"
    masked = redact(f"write to {address} today")
    assert address not in masked
    assert masked == f"write to {EMAIL} today"


@given(CARDS, st.sampled_from(["", " ", "-"]))
def test_card_numbers_that_pass_luhn_are_masked(number: str, sep: str) -> None:
    grouped = sep.join(number[i : i + 4] for i in range(0, 16, 4))
    assert redact(f"my card is {grouped}, thanks") == f"my card is {CARD}, thanks"


@given(st.text(string.ascii_letters + " ,.!?'", max_size=200))
def test_text_without_digits_or_at_signs_is_unchanged(text: str) -> None:
    assert redact(text) == text


def test_phone_numbers_are_masked_and_ordinary_numbers_are_not() -> None:
    assert redact("call +31 20 123 4567") == f"call {PHONE}"
    assert redact("or (020) 123-4567, or 0612345678") == f"or {PHONE}, or {PHONE}"
    for kept in (
        "order 1234 shipped on 2026-11-23",
        "it costs 3.50 for 12 items",
        "meet at 10:30 on 23/11/2026",
        "card 4111-1111-1111-1112 fails the check",  # not Luhn-valid: not a card
    ):
        assert redact(kept) == kept
