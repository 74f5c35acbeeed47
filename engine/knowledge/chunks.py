"""Cutting a document into chunks along its structure: headings first, then paragraphs.

A chunk holds whole paragraphs of one section, up to ``MAX_TOKENS``. A section too short to
stand alone (under ``MIN_TOKENS``) is joined by the sections that follow, each led by its
heading as a line of the text, so that most chunks are 200–400 tokens and a short FAQ answer
keeps its question. A paragraph over ``MAX_TOKENS`` is cut between sentences, and a sentence
over it between words. Each chunk carries its document's title and the heading path of its first
section.

Tokens are estimated from words (``estimate_tokens``: 4 tokens per 3 words, about what the
bundled SmolLM2 and MiniLM tokenizers give for English prose): ingest never needs a model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from frontdesk.storage import ChunkIn

from .documents import Event, Heading

MIN_TOKENS = 200
MAX_TOKENS = 400
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def estimate_tokens(text: str) -> int:
    return max(1, (len(text.split()) * 4 + 2) // 3)


def chunk_events(title: str, events: Iterable[Event]) -> Iterator[ChunkIn]:
    """The chunks of a document, from its events (see ``Document.events``)."""
    headings: tuple[str, ...] = ()
    chunk_headings: tuple[str, ...] = ()
    parts: list[str] = []
    tokens = 0

    def flush() -> ChunkIn | None:
        nonlocal parts, tokens
        if not parts:
            return None
        chunk = ChunkIn(title, " > ".join(chunk_headings), "\n\n".join(parts), tokens)
        parts, tokens = [], 0
        return chunk

    for event in events:
        if isinstance(event, Heading):
            headings = event.path
            if tokens >= MIN_TOKENS and (done := flush()) is not None:
                yield done
            if not parts:
                chunk_headings = headings
            elif headings:  # a short section goes on: its heading leads its text
                line = headings[-1]
                parts.append(line)
                tokens += estimate_tokens(line)
            continue
        for piece in _pieces(event.text):
            size = estimate_tokens(piece)
            if tokens + size > MAX_TOKENS and (done := flush()) is not None:
                yield done
            if not parts:
                chunk_headings = headings
            parts.append(piece)
            tokens += size
    if (done := flush()) is not None:
        yield done


def _pieces(text: str) -> Iterator[str]:
    """``text`` in pieces of at most MAX_TOKENS: whole when it fits, else whole sentences,
    else words."""
    if estimate_tokens(text) <= MAX_TOKENS:
        yield text
        return
    piece: list[str] = []
    size = 0
    for sentence in _SENTENCE_END.split(text):
        for part in _words_upto(sentence, MAX_TOKENS):
            n = estimate_tokens(part)
            if piece and size + n > MAX_TOKENS:
                yield " ".join(piece)
                piece, size = [], 0
            piece.append(part)
            size += n
    if piece:
        yield " ".join(piece)


def _words_upto(sentence: str, limit: int) -> Iterator[str]:
    words = sentence.split()
    step = max(1, limit * 3 // 4)
    for start in range(0, len(words), step):
        yield " ".join(words[start : start + step])
