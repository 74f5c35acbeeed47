"""Splitting long replies: parts fit, join back to the whole, cut at good places, and stay put
while the text grows."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from frontdesk.bots.text import split_text, utf16_len

words = st.text(alphabet=st.sampled_from(list("abcdé 😀.\n!?,")), max_size=3000)


@settings(max_examples=300, deadline=None)
@given(text=words, limit=st.integers(min_value=2, max_value=500))
def test_parts_fit_and_join_back(text: str, limit: int) -> None:
    parts = split_text(text, limit, utf16_len)
    assert "".join(parts) == text
    assert all(utf16_len(p) <= limit for p in parts)
    assert all(parts) or parts == [""]


@settings(max_examples=200, deadline=None)
@given(text=words, extra=words, limit=st.integers(min_value=2, max_value=300))
def test_full_parts_do_not_change_as_text_grows(text: str, extra: str, limit: int) -> None:
    before = split_text(text, limit, utf16_len)
    after = split_text(text + extra, limit, utf16_len)
    assert after[: len(before) - 1] == before[:-1]


def test_cuts_at_paragraphs_then_sentences() -> None:
    para = "First paragraph. " * 10 + "\n\n"
    parts = split_text(para * 3, len(para) * 2 - 5)
    assert parts[0].endswith("\n\n")
    sentences = "A sentence here. " * 40
    parts = split_text(sentences, 100)
    assert all(p.endswith(". ") for p in parts[:-1])


def test_emoji_count_twice_for_telegram() -> None:
    assert utf16_len("😀a") == 3
    parts = split_text("😀" * 10, 4, utf16_len)
    assert parts == ["😀😀"] * 5
