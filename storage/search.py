"""Full-text search over message text, on the database's own index (migrations 0004 and 0005):
FTS5 on SQLite, a tsvector with a GIN index on PostgreSQL. Both databases give a query one
meaning: it is cut into words (letters and digits; everything else separates them), the common
English words that PostgreSQL does not index (``STOPWORDS``) are left out on both, and a message
matches when it holds every other word, stemmed. Nothing in a query is an operator: SQLite gets
each word quoted, PostgreSQL gets the words through ``plainto_tsquery``, and on PostgreSQL the
indexed text has its punctuation turned into spaces first, so an e-mail address or a URL is words
there as on SQLite. A hit carries the message's whole text and the words that matched in it, so
that the caller masks personal data first and only then highlights and crops."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    column,
    func,
    literal_column,
    select,
    table,
)

from .filters import LogFilter, LogQueries
from .models import Conversation, Message

HIT_START, HIT_END = "\x02", "\x03"  # around each hit in the text a database marks
SEARCH_WINDOW = 20_000  # newest message ids searched first (PostgreSQL)


@dataclass(frozen=True, slots=True)
class SearchHit:
    conversation_id: int
    message_id: int
    platform: str
    user_id: str | None
    user_name: str | None
    role: str
    created_at: datetime
    text: str  # the message's whole text
    hits: frozenset[str]  # the words of ``text`` that matched, in lower case


class SearchQueries(LogQueries):
    """``search`` over a started ``Store``."""

    async def search(self, query: str, filt: LogFilter) -> list[SearchHit]:
        """Messages holding every word of ``query`` (stemmed, see ``search_words``), newest
        first."""
        words = search_words(query)
        if not words:
            return []
        columns = (
            Message.conversation_id,
            Message.id,
            Conversation.platform,
            Message.user_id,
            Message.user_name,
            Message.role,
            Message.created_at,
            Message.content,
        )
        if self.dialect == "postgresql":
            tsquery = func.plainto_tsquery("english", " ".join(words))
            options = f"HighlightAll=TRUE, StartSel={HIT_START}, StopSel={HIT_END}"
            # highlighted in the text as indexed (punctuation as spaces): only its words count
            marked = func.ts_headline("english", indexed_text(Message.content), tsquery, options)
            match: ColumnElement[bool] = literal_column("messages.content_tsv").op("@@")(tsquery)
            stmt = select(*columns, marked).select_from(Message)
        else:
            fts_query = " ".join(f'"{w}"' for w in words)
            marked = func.highlight(literal_column("messages_fts"), 0, HIT_START, HIT_END)
            match = literal_column("messages_fts").op("MATCH")(fts_query)
            stmt = (
                select(*columns, marked).select_from(_FTS).join(Message, Message.id == _FTS.c.rowid)
            )
        # On PostgreSQL, "id + 0" keeps the planner from walking the primary key backwards in
        # the hope of meeting matches early: with a word it overestimates, that walk reads the
        # whole table. It uses the GIN index and sorts what matches instead.
        newest_first = (Message.id + 0) if self.dialect == "postgresql" else Message.id
        stmt = (
            stmt.join(Conversation, Conversation.id == Message.conversation_id)
            .where(match, *self._message_filters(filt))
            .order_by(newest_first.desc())
        )
        if filt.limit:
            stmt = stmt.limit(filt.limit)
        async with self.store.connect() as conn:
            if self.dialect != "postgresql" or not filt.limit:
                rows = (await conn.execute(stmt)).all()
                return [_hit(row) for row in rows]
            # Sorting every match of a common word would be slow, so search the newest ids
            # first, in windows that grow eightfold until the limit is met: the GIN index and
            # an id range together keep each step small.
            newest = await conn.scalar(select(func.max(Message.id))) or 0
            window = SEARCH_WINDOW
            while True:
                lowest = newest - window
                rows = (await conn.execute(stmt.where(Message.id > lowest))).all()
                if len(rows) >= filt.limit or lowest <= 0:
                    return [_hit(row) for row in rows]
                window *= 8


WORD = re.compile(r"[^\W_]+")  # what both databases' tokenizers take for a word
_MARKED = re.compile(f"{HIT_START}([^{HIT_END}]*){HIT_END}")
_FTS = table("messages_fts", column("rowid"))

# PostgreSQL's English stopwords (tsearch_data/english.stop): it indexes none of them, so a query
# leaves them out on both databases, and a word means the same everywhere.
STOPWORDS = frozenset(
    """i me my myself we our ours ourselves you your yours yourself yourselves he him his himself
    she her hers herself it its itself they them their theirs themselves what which who whom this
    that these those am is are was were be been being have has had having do does did doing a an
    the and but if or because as until while of at by for with about against between into through
    during before after above below to from up down in out on off over under again further then
    once here there when where why how all any both each few more most other some such no nor not
    only own same so than too very s t can will just don should now""".split()  # noqa: SIM905
)


def search_words(query: str) -> list[str]:
    """The words a search looks for: letters and digits, in lower case, stopwords left out."""
    return [w for w in WORD.findall(query.lower()) if w not in STOPWORDS]


def indexed_text(content: Any) -> Any:
    """The SQL expression PostgreSQL's full-text index is built on (migration 0005): the text
    with its punctuation as spaces, so that its parser sees words only, as FTS5's does."""
    return func.regexp_replace(content, "[[:punct:]]", " ", "g")


def _hit(row: Sequence[Any]) -> SearchHit:
    conversation_id, message_id, platform, user_id, user_name, role, at, text, marked = row
    return SearchHit(
        conversation_id=conversation_id,
        message_id=message_id,
        platform=platform,
        user_id=user_id,
        user_name=user_name,
        role=role,
        created_at=at,
        text=text,
        hits=frozenset(word.lower() for word in _MARKED.findall(marked or "")),
    )
