"""``Backoff``: the delay doubles after each failure up to its cap, and starts over after a
success."""

from __future__ import annotations

import asyncio

import pytest

from frontdesk.backoff import Backoff


async def test_the_delay_doubles_up_to_the_cap_and_a_success_starts_it_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    backoff = Backoff(first_s=0.1, cap_s=0.5)
    for _ in range(5):
        await backoff.wait()
    backoff.reset()
    await backoff.wait()
    assert slept == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5, 0.1])
