"""The operators' side of storage: filtered listing, full-text search, streaming export, erasure,
retention and usage figures over the conversation logs.

Everything here reads or deletes through one ``LogFilter`` (platform, user, time window, status),
so every admin command filters the same way. Nothing here runs on a turn's hot path.

Search uses the database's own full-text index (migrations 0004 and 0005): FTS5 on SQLite, a
tsvector with a GIN index on PostgreSQL. Both databases give a query one meaning: it is cut into
words (letters and digits; everything else separates them), the common English words that
PostgreSQL does not index (``STOPWORDS``) are left out on both, and a message matches when it holds
every other word, stemmed. Nothing in a query is an operator: SQLite gets each word quoted,
PostgreSQL gets the words through ``plainto_tsquery``, and on PostgreSQL the indexed text has its
punctuation turned into spaces first, so an e-mail address or a URL is words there as on SQLite.
A hit carries the message's whole text and the words that matched in it, so that the caller masks
personal data first and only then highlights and crops.
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    column,
    delete,
    func,
    literal_column,
    or_,
    select,
    table,
    true,
)
from sqlalchemy import update as sql_update

from frontdesk.errors import NotFound

from .models import Conversation, Message
from .store import ConversationSummary, Store

HIT_START, HIT_END = "\x02", "\x03"  # around each search hit in a snippet; callers render them
EXPORT_BATCH = 2_000
DELETE_BATCH = 500
SEARCH_WINDOW = 20_000  # newest message ids searched first (PostgreSQL)


@dataclass(frozen=True, slots=True)
class LogFilter:
    """Which conversations (and their messages) a command covers. ``user`` matches a user id on
    any platform, or a display name exactly (case-insensitive). ``since``/``until`` bound the
    conversation's last activity for listings, and each message's time for search, export and
    figures."""

    platform: str | None = None
    user: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    status: str | None = None
    limit: int | None = 50


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


EXPORT_COLUMNS = (
    "message_id",
    "conversation_id",
    "platform",
    "chat",
    "user_id",
    "user_name",
    "role",
    "content",
    "created_at",
    "tokens_in",
    "tokens_out",
    "ttft_ms",
    "latency_ms",
    "model",
    "status",
    "error",
)


@dataclass(frozen=True, slots=True)
class Removed:
    """What an erasure or retention run deleted."""

    conversations: int = 0
    messages: int = 0
    users: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PlatformStats:
    platform: str
    turns: int
    turns_per_day: dict[str, int]
    active_users: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    tokens_in: int
    tokens_out: int
    errors: int
    error_rate: float


@dataclass(frozen=True, slots=True)
class TailMessage:
    id: int
    conversation_id: int
    platform: str
    user_id: str | None
    user_name: str | None
    role: str
    content: str
    created_at: datetime
    status: str


class Logs:
    """Admin reads and deletions over a started ``Store``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.dialect = store.dialect

    # -- filters ----------------------------------------------------------------------------------

    def _conversation_filters(self, filt: LogFilter) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = []
        if filt.platform:
            where.append(Conversation.platform == filt.platform)
        if filt.user:
            where.append(
                or_(
                    Conversation.user_id == filt.user,
                    func.lower(Conversation.user_name) == filt.user.lower(),
                )
            )
        if filt.status:
            where.append(Conversation.status == filt.status)
        return where

    def _message_filters(self, filt: LogFilter) -> list[ColumnElement[bool]]:
        where = self._conversation_filters(filt)
        if filt.since:
            where.append(Message.created_at >= filt.since)
        if filt.until:
            where.append(Message.created_at < filt.until)
        return where

    # -- list -------------------------------------------------------------------------------------

    async def list_conversations(self, filt: LogFilter) -> list[ConversationSummary]:
        """Conversations by last activity, newest first, each with its last message."""
        where = self._conversation_filters(filt)
        if filt.since:
            where.append(Conversation.last_activity_at >= filt.since)
        if filt.until:
            where.append(Conversation.last_activity_at < filt.until)
        return await self.store.list_conversations(limit=filt.limit, where=where)

    # -- search -----------------------------------------------------------------------------------

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
        async with self.store._connect() as conn:
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

    # -- export -----------------------------------------------------------------------------------

    def _export_query(self, filt: LogFilter) -> Select[*tuple[Any, ...]]:
        return (
            select(
                Message.id,
                Message.conversation_id,
                Conversation.platform,
                Conversation.external_key,
                Message.user_id,
                Message.user_name,
                Message.role,
                Message.content,
                Message.created_at,
                Message.tokens_in,
                Message.tokens_out,
                Message.ttft_ms,
                Message.latency_ms,
                Message.model,
                Message.status,
                Message.error,
            )
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(and_(true(), *self._message_filters(filt)))
        )

    async def count_messages(self, filt: LogFilter) -> int:
        """How many messages an export with ``filt`` would write (its limit aside)."""
        inner = self._export_query(filt).with_only_columns(Message.id).subquery()
        async with self.store._connect() as conn:
            total = await conn.scalar(select(func.count()).select_from(inner))
        return min(total or 0, filt.limit) if filt.limit else total or 0

    async def export_batches(self, filt: LogFilter) -> AsyncIterator[Sequence[Sequence[Any]]]:
        """Messages in id order, as batches of tuples in ``EXPORT_COLUMNS`` order, streamed
        from a server-side cursor: memory stays flat however many there are."""
        stmt = self._export_query(filt).order_by(Message.id)
        if filt.limit:
            stmt = stmt.limit(filt.limit)
        async with self.store._snapshot() as conn:
            result = await conn.stream(stmt.execution_options(yield_per=EXPORT_BATCH))
            async for batch in result.partitions():
                yield batch

    # -- tail -------------------------------------------------------------------------------------

    async def messages_after(self, after_id: int, filt: LogFilter) -> list[TailMessage]:
        """Messages newer than ``after_id``, oldest first (at most ``filt.limit``)."""
        stmt = (
            select(
                Message.id,
                Message.conversation_id,
                Conversation.platform,
                Message.user_id,
                Message.user_name,
                Message.role,
                Message.content,
                Message.created_at,
                Message.status,
            )
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(Message.id > after_id, *self._message_filters(filt))
            .order_by(Message.id)
        )
        if filt.limit:
            stmt = stmt.limit(filt.limit)
        async with self.store._connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [TailMessage(*row) for row in rows]

    async def tail_start(self, count: int, filt: LogFilter) -> int:
        """The id just before the newest ``count`` messages matching ``filt`` (where tail starts)."""
        stmt = (
            select(Message.id)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(*self._message_filters(filt))
            .order_by(Message.id.desc())
            .limit(count + 1)
        )
        async with self.store._connect() as conn:
            ids = (await conn.scalars(stmt)).all()
        if len(ids) <= count:
            return 0
        return ids[-1]

    # -- erasure and retention --------------------------------------------------------------------

    async def delete_conversation(self, conversation_id: int) -> Removed:
        """Delete one conversation and all its messages. Raises NotFound."""
        async with self.store._transaction() as conn:
            found = await conn.scalar(
                select(Conversation.id).where(Conversation.id == conversation_id)
            )
            if found is None:
                raise NotFound(f"no conversation with id {conversation_id}")
            messages = await _delete_messages_of(conn, [conversation_id])
            await conn.execute(delete(Conversation).where(Conversation.id == conversation_id))
        return Removed(conversations=1, messages=messages)

    async def user_matches(self, user: str) -> list[tuple[str, str, str | None]]:
        """(platform, user id, display name) of each user ``user`` names, one row a user. A user
        id names that id on every platform; otherwise ``user`` is a display name (exact, any
        case), which several users may share."""
        found: dict[tuple[str, str], str | None] = {}
        async with self.store._connect() as conn:
            for by_id in (True, False):
                for table_ in (Message, Conversation):
                    where = (
                        table_.user_id == user
                        if by_id
                        else func.lower(table_.user_name) == user.lower()
                    )
                    stmt = select(table_.platform, table_.user_id, table_.user_name).where(
                        where, table_.user_id.is_not(None), table_.platform.is_not(None)
                    )
                    for platform, user_id, name in (await conn.execute(stmt.distinct())).all():
                        if found.get((str(platform), str(user_id))) is None:
                            found[(str(platform), str(user_id))] = name
                if found:  # an id match wins over a display name
                    break
        return sorted((p, u, n) for (p, u), n in found.items())

    async def purge_user(self, users: Sequence[tuple[str, str]]) -> Removed:
        """Right to erasure for these (platform, user id) pairs, in one transaction: every
        message they wrote and every reply to one of them, and then each conversation that
        holds nobody else's messages. A conversation someone else also wrote in (a group chat,
        a Slack thread) keeps their turns and the replies to them; if the user had opened it,
        it passes to whoever wrote next, so no row names the user."""
        if not users:
            return Removed()
        by_msg = or_(*(and_(Message.platform == p, Message.user_id == u) for p, u in users))
        by_conv = or_(
            *(and_(Conversation.platform == p, Conversation.user_id == u) for p, u in users)
        )
        async with self.store._transaction() as conn:
            touched = set(
                await conn.scalars(select(Message.conversation_id).where(by_msg).distinct())
            )
            touched |= set(await conn.scalars(select(Conversation.id).where(by_conv)))
            theirs = select(Message.id).where(by_msg)
            replies = await conn.execute(delete(Message).where(Message.reply_to_id.in_(theirs)))
            own = await conn.execute(delete(Message).where(by_msg))
            messages = (replies.rowcount or 0) + (own.rowcount or 0)
            candidates = sorted(touched)
            others = select(Message.id).where(
                Message.conversation_id == Conversation.id, Message.role == "user"
            )
            empty = list(
                await conn.scalars(
                    select(Conversation.id).where(Conversation.id.in_(candidates), ~others.exists())
                )
            )
            messages += await _delete_messages_of(conn, empty)
            for start in range(0, len(empty), DELETE_BATCH):
                chunk = empty[start : start + DELETE_BATCH]
                await conn.execute(delete(Conversation).where(Conversation.id.in_(chunk)))
            kept = sorted(touched - set(empty))
            await _recount(conn, kept)
            await _pass_on(conn, kept, by_conv)
        return Removed(
            conversations=len(empty), messages=messages, users=sorted({u for _p, u in users})
        )

    async def purge_older_than(self, cutoff: datetime, filt: LogFilter | None = None) -> Removed:
        """Retention: delete conversations whose last activity is before ``cutoff``."""
        where = [Conversation.last_activity_at < cutoff]
        if filt is not None:
            where += self._conversation_filters(filt)
        async with self.store._transaction() as conn:
            conv_ids = list(await conn.scalars(select(Conversation.id).where(*where)))
            messages = await _delete_messages_of(conn, conv_ids)
            for start in range(0, len(conv_ids), DELETE_BATCH):
                chunk = conv_ids[start : start + DELETE_BATCH]
                await conn.execute(delete(Conversation).where(Conversation.id.in_(chunk)))
        return Removed(conversations=len(conv_ids), messages=messages)

    async def count_older_than(self, cutoff: datetime, filt: LogFilter | None = None) -> int:
        where = [Conversation.last_activity_at < cutoff]
        if filt is not None:
            where += self._conversation_filters(filt)
        async with self.store._connect() as conn:
            total = await conn.scalar(select(func.count()).select_from(Conversation).where(*where))
        return total or 0

    # -- figures ----------------------------------------------------------------------------------

    async def stats(self, filt: LogFilter) -> list[PlatformStats]:
        """Per platform over the filter's window: turns (replies) per day, active users, reply
        latency and time to first token (p50, p95), tokens in and out, and the error rate."""
        where = self._message_filters(filt)
        replies = (
            select(
                Conversation.platform,
                Message.created_at,
                Message.latency_ms,
                Message.ttft_ms,
                Message.tokens_in,
                Message.tokens_out,
                Message.status,
            )
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(Message.role == "assistant", *where)
        )
        users = (
            select(Conversation.platform, func.count(func.distinct(Message.user_id)))
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(Message.role == "user", *where)
            .group_by(Conversation.platform)
        )
        per: dict[str, _Figures] = defaultdict(_Figures)
        async with self.store._snapshot() as conn:
            result = await conn.stream(replies.execution_options(yield_per=EXPORT_BATCH))
            async for batch in result.partitions():
                for platform, at, latency, ttft, t_in, t_out, status in batch:
                    per[platform].add(at, latency, ttft, t_in, t_out, status)
            active = dict((await conn.execute(users)).all())
        return [per[p].summary(p, active.get(p, 0)) for p in sorted(per.keys() | active.keys())]


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


async def _delete_messages_of(conn: Any, conv_ids: list[int]) -> int:
    """Delete the messages of these conversations, a batch at a time; returns how many."""
    removed = 0
    for start in range(0, len(conv_ids), DELETE_BATCH):
        chunk = conv_ids[start : start + DELETE_BATCH]
        result = await conn.execute(delete(Message).where(Message.conversation_id.in_(chunk)))
        removed += result.rowcount or 0
    return removed


async def _recount(conn: Any, conv_ids: list[int]) -> None:
    """Set message_count again for conversations that lost messages (the counter trigger only
    counts inserts)."""
    count = (
        select(func.count())
        .where(Message.conversation_id == Conversation.id)
        .correlate(Conversation)
        .scalar_subquery()
    )
    for start in range(0, len(conv_ids), DELETE_BATCH):
        chunk = conv_ids[start : start + DELETE_BATCH]
        await conn.execute(
            sql_update(Conversation)
            .where(Conversation.id.in_(chunk))
            .values(message_count=count)
            .execution_options(synchronize_session=False)
        )


async def _pass_on(conn: Any, conv_ids: list[int], owned: ColumnElement[bool]) -> None:
    """Conversations among ``conv_ids`` that ``owned`` matches get as their user the author of
    their earliest user message left."""
    first = (
        select(Message.id)
        .where(Message.conversation_id == Conversation.id, Message.role == "user")
        .order_by(Message.id)
        .limit(1)
        .correlate(Conversation)
        .scalar_subquery()
    )
    author = select(Message.user_id).where(Message.id == first).scalar_subquery()
    name = select(Message.user_name).where(Message.id == first).scalar_subquery()
    for start in range(0, len(conv_ids), DELETE_BATCH):
        chunk = conv_ids[start : start + DELETE_BATCH]
        await conn.execute(
            sql_update(Conversation)
            .where(Conversation.id.in_(chunk), owned)
            .values(user_id=author, user_name=name)
            .execution_options(synchronize_session=False)
        )


class _Figures:
    """Running figures of one platform's replies."""

    def __init__(self) -> None:
        self.per_day: dict[date, int] = defaultdict(int)
        self.latency: list[float] = []
        self.ttft: list[float] = []
        self.tokens_in = self.tokens_out = self.errors = self.turns = 0

    def add(
        self,
        at: datetime,
        latency: float | None,
        ttft: float | None,
        tokens_in: int | None,
        tokens_out: int | None,
        status: str,
    ) -> None:
        self.turns += 1
        self.per_day[at.date()] += 1
        if latency is not None:
            self.latency.append(latency)
        if ttft is not None:
            self.ttft.append(ttft)
        self.tokens_in += tokens_in or 0
        self.tokens_out += tokens_out or 0
        self.errors += status != "ok"

    def summary(self, platform: str, active_users: int) -> PlatformStats:
        p50l, p95l = _percentiles(self.latency)
        p50t, p95t = _percentiles(self.ttft)
        return PlatformStats(
            platform=platform,
            turns=self.turns,
            turns_per_day={d.isoformat(): n for d, n in sorted(self.per_day.items())},
            active_users=active_users,
            latency_p50_ms=p50l,
            latency_p95_ms=p95l,
            ttft_p50_ms=p50t,
            ttft_p95_ms=p95t,
            tokens_in=self.tokens_in,
            tokens_out=self.tokens_out,
            errors=self.errors,
            error_rate=self.errors / self.turns if self.turns else 0.0,
        )


def _percentiles(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    if len(values) == 1:
        return values[0], values[0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[94]
