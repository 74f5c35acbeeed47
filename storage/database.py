"""``Database``: one database and the connections to it, for every storage module. It makes the
engine (SQLite through aiosqlite in WAL mode, PostgreSQL through asyncpg with a fixed pool), starts
and stops it, checks or upgrades the schema (Alembic), and hands out connections: autocommit ones
for single statements, transactions for multi-statement deletions, and snapshots for streaming
reads. Connection failures surface as ``StorageUnavailable``, and no URL is ever printed with its
password."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Self

import asyncpg
from sqlalchemy import event, text
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.expression import ClauseElement
from sqlalchemy.util import greenlet_spawn

from frontdesk.errors import ConfigError, StorageUnavailable
from frontdesk.secrets import hide_password


def _describe(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return hide_password(url)


class Database:
    """One database. ``async with`` it, or ``start()`` and ``stop()``."""

    def __init__(self, url: str, *, pool_size: int = 20, echo: bool = False) -> None:
        self.url = url
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise ConfigError(
                f"FRONTDESK_DATABASE_URL is not a database URL: {hide_password(url)!r} "
                "(like postgresql+asyncpg://user@host/db or sqlite+aiosqlite:///frontdesk.db)"
            ) from exc
        self.dialect = parsed.get_backend_name()
        self._engine_options: dict[str, Any] = {"echo": echo}
        if self.dialect == "sqlite":
            # Gateway and worker write from one process in embedded mode: wait for the lock.
            self._engine_options["connect_args"] = {"timeout": 30}
        else:
            # A fixed pool: overflow connections would be opened and closed again under load.
            # Most recent first: at a quiet hour the turns run on one warm connection, whose
            # server process has the tables' caches filled, not on each of the pool's in turn.
            # No JIT: it compiles for hundreds of milliseconds to save a few on short queries.
            self._engine_options.update(
                pool_size=pool_size, max_overflow=0, pool_recycle=1800, pool_use_lifo=True,
                connect_args={"server_settings": {"jit": "off"}},
            )  # fmt: skip
        # Every hot-path write is one statement (counters are kept by a trigger), so statements
        # run in autocommit: no BEGIN/COMMIT round trips. A dropped connection invalidates the
        # pool, so the next call reconnects without a pre-ping on every checkout.
        self.engine: AsyncEngine = self._create_engine(isolation_level="AUTOCOMMIT")
        self._hot: list[DriverStatement] = []  # every statement of driver_statement's

    def _create_engine(self, **options: Any) -> AsyncEngine:
        try:
            engine = create_async_engine(self.url, **self._engine_options, **options)
        except (ArgumentError, ImportError) as exc:
            raise ConfigError(f"cannot use database {_describe(self.url)}: {exc}") from exc
        if self.dialect == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, *, migrate: bool = False, warm: bool = False) -> None:
        """Connect, and check the schema: upgrade it when ``migrate``, else insist it is current.
        ``warm`` (a gateway's or a worker's store, not an admin command's): the hot statements
        are compiled now (``_warm``)."""
        from . import migrations

        if migrate:
            await self.upgrade()
        else:
            current = await self.schema_revision()
            if current != migrations.head_revision():
                raise StorageUnavailable(
                    f"the database schema at {_describe(self.url)} is at revision "
                    f"{current or 'none'}, not {migrations.head_revision()}: "
                    "run `frontdesk db upgrade`"
                )
        if warm:
            self._warm()
        await self._fill_pool()

    async def ping(self) -> None:
        """Raise StorageUnavailable unless the database answers a query now."""
        async with self.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def schema_revision(self) -> str | None:
        """The schema's current Alembic revision, None before the first migration."""
        from . import migrations

        async with self.connect() as conn:
            return await conn.run_sync(migrations.current_revision)

    @staticmethod
    def head_revision() -> str:
        """The revision this version of frontdesk needs."""
        from . import migrations

        return migrations.head_revision()

    def sqlite_file(self) -> Path | None:
        """The database file on SQLite (None in memory, or on another database): connecting
        creates it, so a caller that only looks can check it exists first."""
        database = make_url(self.url).database
        if self.dialect != "sqlite" or not database or database == ":memory:":
            return None
        return Path(database)

    async def _fill_pool(self) -> None:
        """Open the whole pool now, so that the first burst of traffic does not pay for
        connecting (tens of milliseconds a connection) on its way to the user."""
        size = self._engine_options.get("pool_size", 0)
        if not size:
            return
        async with contextlib.AsyncExitStack() as stack:
            await asyncio.gather(*(stack.enter_async_context(self.connect()) for _ in range(size)))

    def _warm(self) -> None:
        """Compile the hot statements (``driver_statement``) now, so that a process's first turns
        do not pay for it on their way to the user: 1-7 ms a statement, once a process (8.5 ms
        for the three of a turn taken alone, 12 ms for all of them). Not prepared on each
        connection: a statement prepared alone keeps the connection in an open transaction
        until its next statement (asyncpg syncs with the execute), holding the tables' locks."""
        for statement in self._hot:
            statement.sql  # noqa: B018 (compiled on first access)

    async def stop(self) -> None:
        await self.engine.dispose()

    async def upgrade(self) -> str:
        """Run the Alembic migrations up to head, in one transaction; returns the head revision."""
        from . import migrations

        engine = self._create_engine()
        try:
            async with _translated(self.url), engine.begin() as conn:
                await conn.run_sync(migrations.upgrade_to_head)
        finally:
            await engine.dispose()
        return migrations.head_revision()

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a read transaction (one consistent snapshot), which streaming reads
        need: PostgreSQL opens server-side cursors only inside a transaction."""
        async with self.transaction("REPEATABLE READ") as conn:
            yield conn

    @asynccontextmanager
    async def transaction(self, level: str = "READ COMMITTED") -> AsyncIterator[AsyncConnection]:
        """A connection in one transaction: for the admin's multi-statement deletions, which
        must happen whole or not at all."""
        level = "SERIALIZABLE" if self.dialect == "sqlite" else level
        async with _translated(self.url), self.engine.connect() as conn:
            await conn.execution_options(isolation_level=level)
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """An autocommit connection, with connection failures translated."""
        async with _translated(self.url), self.engine.connect() as conn:
            yield conn

    def driver_statement(self, statement: ClauseElement) -> DriverStatement | None:
        """``statement`` for asyncpg (PostgreSQL; None on SQLite), for ``driver_rows``: compiled
        once, at its first use or when a store starts ``warm``."""
        if self.dialect != "postgresql":
            return None
        made = DriverStatement(statement, self.engine.dialect)
        self._hot.append(made)
        return made

    async def driver_rows(
        self, statement: DriverStatement, params: Mapping[str, Any]
    ) -> Sequence[Sequence[Any]]:
        """The rows of a hot statement, run by asyncpg itself on a pooled connection: no
        statement building, parameter processing or result objects of SQLAlchemy's (a quarter
        of a millisecond of CPU a statement; asyncpg prepares it once per connection). Values
        go as they are, so the statement's parameters must be of types asyncpg takes (str,
        numbers, aware datetimes, None). Failures are translated as ``connect``'s are: a lost
        connection raises StorageUnavailable and, as in SQLAlchemy, the pool's connections are
        opened afresh; a constraint violation raises SQLAlchemy's IntegrityError."""
        args = [params[n] if n in params else statement.defaults[n] for n in statement.names]
        # the pool's connection itself, not a SQLAlchemy Connection around it: no Connection
        # object, and no task to close one (half the CPU of checking one out and back in)
        async with _translated(self.url):
            pooled = await self.engine.raw_connection()
        try:
            driver: Any = pooled.driver_connection
            try:
                rows: Sequence[Sequence[Any]] = await driver.fetch(statement.sql, *args)
            except Exception as exc:
                if isinstance(exc, OSError | TimeoutError) or driver.is_closed():
                    # as SQLAlchemy does on a disconnect: every connection opened before now
                    # is replaced at its next checkout (the server went, or the network)
                    await greenlet_spawn(self.engine.sync_engine.pool._invalidate, pooled, exc)
                    raise StorageUnavailable(
                        f"cannot reach the database at {_describe(self.url)}: {_first_line(exc)}"
                    ) from exc
                if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
                    raise IntegrityError(statement.sql, args, exc) from exc
                raise
        finally:
            # back to the pool; in autocommit there is no transaction to roll back, so this
            # does not wait (a cancellation cannot cut it short)
            await greenlet_spawn(pooled.close)
        return rows


class DriverStatement:
    """A statement compiled for asyncpg: its SQL ($n parameters), the parameters' names in $n
    order, and the values of those the statement itself holds (its literals). Compiled at its
    first use, or when a gateway's or worker's store starts (``Database._warm``), not when made:
    a process that never runs it (an admin command) never pays for it (1-7 ms a statement
    here)."""

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        self._statement = statement
        self._dialect = dialect

    @functools.cached_property
    def _compiled(self) -> tuple[str, tuple[str, ...], dict[str, Any]]:
        compiled: Any = self._statement.compile(dialect=self._dialect)  # a SQLCompiler
        return compiled.string, tuple(compiled.positiontup or ()), dict(compiled.params)

    @property
    def sql(self) -> str:
        return self._compiled[0]

    @property
    def names(self) -> tuple[str, ...]:
        return self._compiled[1]

    @property
    def defaults(self) -> dict[str, Any]:
        return self._compiled[2]


def dialect_insert(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert
    if dialect == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite.insert
    raise ConfigError(f"unsupported database {dialect!r}: use SQLite or PostgreSQL")


@asynccontextmanager
async def _translated(url: str) -> AsyncIterator[None]:
    """Connection failures become StorageUnavailable; other database errors pass through."""
    try:
        yield
    except IntegrityError:
        raise
    except (OperationalError, DBAPIError, OSError) as exc:
        if isinstance(exc, DBAPIError) and not _is_connection_error(exc):
            raise
        raise StorageUnavailable(
            f"cannot reach the database at {_describe(url)}: {_first_line(exc)}"
        ) from exc


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _is_connection_error(exc: DBAPIError) -> bool:
    if exc.connection_invalidated or isinstance(exc, OperationalError):
        return True
    orig = exc.orig
    return (
        isinstance(orig, OSError | ConnectionError) or "connection" in type(orig).__name__.lower()
    )


def _first_line(exc: BaseException) -> str:
    inner = getattr(exc, "orig", None) or exc.__cause__ or exc
    text = str(inner).strip() or type(inner).__name__
    return text.splitlines()[0]
