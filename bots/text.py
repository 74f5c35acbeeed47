"""Splitting long replies for platforms that cap a message's length.

``split_text`` cuts at the best boundary it can find (a paragraph, then a line, then a sentence,
then a word, only then mid-word) in the second half of the allowed length. Cuts depend only on the
text before them, so while a reply streams in, the parts already full never change: a channel can
finish one message and start the next. Lengths are counted by a function the channel gives, as
platforms count differently (Telegram counts UTF-16 code units).
"""

from __future__ import annotations

import re
from collections.abc import Callable

_BOUNDARIES = (
    re.compile(r"\n\s*\n"),  # paragraph
    re.compile(r"\n"),  # line
    re.compile(r"[.!?…][\"')\]]*\s"),  # sentence
    re.compile(r"\s"),  # word
)


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units: characters outside the BMP (most emoji) count twice."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def split_text(text: str, limit: int, measure: Callable[[str], int] = len) -> list[str]:
    """Cut ``text`` into parts of at most ``limit`` (as ``measure`` counts) that join back to it."""
    if limit < 2:
        raise ValueError("limit must be at least 2")
    parts: list[str] = []
    rest = text
    while measure(rest) > limit:
        fit = _longest_fitting_prefix(rest, limit, measure)
        cut = _best_cut(rest[:fit])
        parts.append(rest[:cut])
        rest = rest[cut:]
    if rest or not parts:
        parts.append(rest)
    return parts


def _longest_fitting_prefix(text: str, limit: int, measure: Callable[[str], int]) -> int:
    lo, hi = 1, min(len(text), limit)  # every unit is at least one character
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if measure(text[:mid]) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _best_cut(window: str) -> int:
    """Where to cut ``window`` (a prefix that fits): after the last boundary of the strongest kind
    found in its second half, so no part is needlessly short; else at the window's end."""
    half = len(window) // 2
    for boundary in _BOUNDARIES:
        cut = None
        for match in boundary.finditer(window, half):
            cut = match.end()
        if cut is not None and cut > 0:
            return cut
    return len(window)
