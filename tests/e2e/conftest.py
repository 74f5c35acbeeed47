"""The environment of the end-to-end tests' real processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator

import pytest

from tests.e2e.processes import CLI


@pytest.fixture
async def env(redis_url: str, queue_prefix: str, pg_fresh: str) -> AsyncIterator[dict[str, str]]:
    values = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FRONTDESK_")},
        "FRONTDESK_REDIS_URL": redis_url,
        "FRONTDESK_QUEUE_PREFIX": queue_prefix,
        "FRONTDESK_DATABASE_URL": pg_fresh,
        "FRONTDESK_ENGINE": "openai",
        "FRONTDESK_QUEUE_CLAIM_IDLE_MS": "1500",
        "FRONTDESK_SWEEP_EVERY_S": "1",
        "FRONTDESK_SWEEP_AFTER_S": "3",
        "FRONTDESK_SHUTDOWN_GRACE_S": "1",
        "FRONTDESK_STREAM_FLUSH_MS": "50",
        "FRONTDESK_BURST_MS": "0",  # each message its own reply (test_bursts.py has the default)
    }
    done = await asyncio.to_thread(
        subprocess.run, [*CLI, "db", "upgrade"], env=values, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    yield values
