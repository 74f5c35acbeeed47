"""`frontdesk export` streams: 200,000 messages go out under a fixed memory ceiling, on SQLite and
on PostgreSQL (measured with tracemalloc around the export alone)."""

from __future__ import annotations

import io
import json
import sqlite3
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from frontdesk.storage import Store
from frontdesk.storage.export import ExportFormat, write_export
from frontdesk.storage.logs import LogFilter, Logs
from tests.conftest import PG_ADMIN_DSN

ROWS = 200_000
PER_CONVERSATION = 100
# Holding the rows would take well over 100 MB (each row is a tuple of 16 Python objects with
# ~200 characters of text); a stream holds one batch and one write buffer
CEILING_BYTES = 16 * 1024 * 1024
TEXT = "Where is my order? It was due on Monday and the tracking page shows nothing at all. "


def _rows(start: datetime) -> tuple[list[tuple], list[tuple]]:
    conversations = []
    messages = []
    for c in range(1, ROWS // PER_CONVERSATION + 1):
        conversations.append(
            (
                c,
                "bench",
                f"chat-{c}",
                f"u{c}",
                f"User {c}",
                "active",
                PER_CONVERSATION,
                start,
                start,
            )
        )
        for n in range(PER_CONVERSATION):
            mid = (c - 1) * PER_CONVERSATION + n + 1
            role = "user" if n % 2 == 0 else "assistant"
            messages.append(
                (mid, c, role, f"{TEXT}#{mid}", "bench", f"k{mid}", start + timedelta(seconds=mid))
            )
    return conversations, messages


_CONV_COLUMNS = (
    "id", "platform", "external_key", "user_id", "user_name", "status", "message_count",
    "created_at", "last_activity_at",
)  # fmt: skip
_MSG_COLUMNS = ("id", "conversation_id", "role", "content", "platform", "dedupe_key", "created_at")


@pytest.fixture(params=["sqlite", "postgresql"])
async def big_database(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[str]:  # type: ignore[no-untyped-def]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    conversations, messages = _rows(start)
    if request.param == "sqlite":
        path = tmp_path / "big.db"
        url = f"sqlite+aiosqlite:///{path}"
        store = Store(url)
        await store.upgrade()
        await store.stop()
        with sqlite3.connect(path) as conn:  # the fast way in: one transaction, executemany
            conn.executemany(
                f"INSERT INTO conversations ({', '.join(_CONV_COLUMNS)}) VALUES "
                f"({', '.join('?' * len(_CONV_COLUMNS))})",
                [(*r[:7], r[7].isoformat(), r[8].isoformat()) for r in conversations],
            )
            conn.executemany(
                f"INSERT INTO messages ({', '.join(_MSG_COLUMNS)}, status) VALUES "
                f"({', '.join('?' * len(_MSG_COLUMNS))}, 'ok')",
                [(*r[:6], r[6].isoformat()) for r in messages],
            )
        yield url
        return
    name = f"frontdesk_export_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        dsn = f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
        url = dsn.replace("postgresql://", "postgresql+asyncpg://")
        store = Store(url)
        await store.upgrade()
        await store.stop()
        conn = await asyncpg.connect(dsn)
        try:
            # seeding only: no counter trigger, no search index to keep up
            await conn.execute("SET session_replication_role = replica")
            await conn.execute("DROP INDEX ix_messages_content_tsv")
            await conn.copy_records_to_table(
                "conversations", records=conversations, columns=_CONV_COLUMNS
            )
            await conn.copy_records_to_table(
                "messages",
                records=[(*r, "ok") for r in messages],
                columns=(*_MSG_COLUMNS, "status"),
            )
        finally:
            await conn.close()
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_export_of_200k_rows_stays_under_a_memory_ceiling(big_database: str) -> None:
    sink = _CountingSink()
    async with Store(big_database, pool_size=2) as store:
        logs = Logs(store)
        tracemalloc.start()
        try:
            written = await write_export(
                logs, LogFilter(limit=None), ExportFormat.jsonl, lambda s: s, sink, None
            )
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert written == ROWS
    assert sink.lines == ROWS
    assert json.loads(sink.last_line)["message_id"] == ROWS  # in id order, to the end
    assert peak < CEILING_BYTES, f"export peaked at {peak / 2**20:.1f} MiB"


class _CountingSink(io.TextIOBase):
    """A text stream that keeps only a count and the last line, so the test's own memory
    does not count."""

    def __init__(self) -> None:
        self.lines = 0
        self.last_line = ""

    def write(self, chunk: str) -> int:
        lines = chunk.splitlines()
        self.lines += len(lines)
        if lines:
            self.last_line = lines[-1]
        return len(chunk)
