"""``Backoff``: the one retry delay of frontdesk's loops that run until they are stopped (the
worker's turn loop, the reply stream reader, the cancel subscriber): after a failure, wait, and
wait twice as long after the next one, up to a cap; after a success, start again from the first
delay."""

from __future__ import annotations

import asyncio


class Backoff:
    """An exponential retry delay. ``await wait()`` after each failure, ``reset()`` after a
    success."""

    def __init__(self, first_s: float = 0.1, cap_s: float = 5.0) -> None:
        self.first_s, self.cap_s = first_s, cap_s
        self.delay_s = first_s  # what the next wait() sleeps

    async def wait(self) -> None:
        await asyncio.sleep(self.delay_s)
        self.delay_s = min(self.delay_s * 2, self.cap_s)

    def reset(self) -> None:
        self.delay_s = self.first_s
