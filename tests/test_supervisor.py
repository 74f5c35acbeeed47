"""The supervisor of long-running tasks: a task that raises is restarted; one that keeps failing
ends the process (``fatal``), so no process goes on with a part of it dead."""

from __future__ import annotations

import asyncio

from frontdesk.supervisor import Supervisor, TaskFailed


async def test_a_task_that_raises_once_is_restarted_and_goes_on() -> None:
    runs: list[int] = []
    served = asyncio.Event()

    async def pump() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise RuntimeError("a bug hit once")
        served.set()
        await asyncio.sleep(3600)

    tasks = Supervisor()
    tasks.spawn("pump", pump)
    await asyncio.wait_for(served.wait(), 5)
    assert runs == [0, 1] and tasks.running("pump") and not tasks.fatal.done()
    await tasks.stop()
    assert not tasks.running("pump")


async def test_a_task_that_keeps_failing_resolves_fatal() -> None:
    async def broken() -> None:
        raise ValueError("always")

    tasks = Supervisor(max_failures=3, window_s=60)
    tasks.spawn("broken", broken)
    failed = await asyncio.wait_for(tasks.fatal, 10)
    assert isinstance(failed, TaskFailed) and "broken keeps failing" in str(failed)
    assert not tasks.running("broken")
    await tasks.stop()


async def test_stop_ends_a_task_whose_first_cancel_was_lost() -> None:
    """On Python 3.11 ``asyncio.wait_for`` can drop a cancel (CPython gh-86296), and redis-py
    sends every command through it: a renewal loop then goes on after its cancel. Stop cancels
    such a task again, and returns."""
    loops = 0

    async def renewal() -> None:
        nonlocal loops
        lost = False
        while True:
            loops += 1
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if lost:
                    raise
                lost = True  # as gh-86296 does: the command's result, and no CancelledError

    tasks = Supervisor()
    tasks.spawn("renewal", renewal)
    await asyncio.sleep(0.05)
    await asyncio.wait_for(tasks.stop(), 5)
    assert not tasks.running("renewal")
    stopped_at = loops
    await asyncio.sleep(0.05)
    assert loops == stopped_at
