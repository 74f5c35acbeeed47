"""What the benchmarks share: percentiles, a free port, a scratch PostgreSQL database, and the
event loop frontdesk's processes run on.

Benchmarks run as scripts (``python bench/NAME.py``), so this folder is on ``sys.path`` and they
import this module as ``common``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import statistics
import uuid
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import asyncpg

from frontdesk.clitools import loop_factory

T = TypeVar("T")


def pct(values: list[float], q: int) -> float:
    """The ``q``-th percentile (inclusive method); 0 for fewer than two values."""
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def on_frontdesk_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the event loop that frontdesk's commands run on (uvloop where installed),
    so that a benchmark measures what a deployed gateway or worker costs."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(coro)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def scratch_database(admin_dsn: str, keep: bool = False) -> AsyncIterator[str]:
    """A new PostgreSQL database for one run (its SQLAlchemy URL), dropped afterwards unless
    ``keep``."""
    name = f"frontdesk_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    base = admin_dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    url = f"{base}/{name}"
    try:
        yield url
    finally:
        if keep:
            print(f"\nkept the database: --database {url}")
        else:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def gateways_ratio(p99s: dict[int, float]) -> str | None:
    """The p99 with the most gateways as a ratio of the p99 with the fewest (issue 20's target:
    at most 1.2x), or None with one count of gateways."""
    if len(p99s) < 2:
        return None
    most, fewest = max(p99s), min(p99s)
    return f"p99 with {most} gateways / with {fewest}: {p99s[most] / p99s[fewest]:.2f}x (target <= 1.2x)"
