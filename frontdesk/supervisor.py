"""``Supervisor``: the one owner of a process's long-running tasks (a gateway's reply pump, a
worker's turn loop, heartbeat, cancel watcher and sweep).

A task that raises is logged with its traceback and started again after a backoff. One that keeps
failing (``max_failures`` times within ``window_s``) resolves ``fatal``: the process awaits that
future, as it awaits a dead engine, and exits non-zero for its supervisor (systemd, Kubernetes) to
restart it. So a process never goes on acking messages while a part of it is dead. Transient errors
(Redis away for a moment) stay handled inside the loops that know them; what reaches here is a bug
or an outage those loops do not expect.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from frontdesk.backoff import Backoff

log = logging.getLogger(__name__)
RECANCEL_AFTER_S = 0.5


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel ``tasks`` and wait for them all, cancelling again any that goes on. On Python
    3.11 a cancel can be lost: ``asyncio.wait_for`` returns the result of an inner future that
    finished in the same turn of the loop and drops the CancelledError (CPython gh-86296, fixed
    in 3.12), and redis-py sends every command through it (its default ``socket_timeout``). A
    loop that ends only on CancelledError (a lease's renewal, a stream's reader) then runs on,
    and a plain gather on it never returns: a gateway's stop hung so in CI."""
    waited = list(tasks)
    pending = {task for task in waited if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=RECANCEL_AFTER_S)
    await asyncio.gather(*waited, return_exceptions=True)  # all done: their errors retrieved


class TaskFailed(RuntimeError):
    """A supervised task kept failing: the process must go."""


class Supervisor:
    def __init__(self, *, max_failures: int = 5, window_s: float = 60.0) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._fatal: asyncio.Future[TaskFailed] | None = None

    @property
    def fatal(self) -> asyncio.Future[TaskFailed]:
        """Resolved with the error once a task has failed for good."""
        if self._fatal is None:
            self._fatal = asyncio.get_running_loop().create_future()
        return self._fatal

    def spawn(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run ``run()`` as the task ``name``, again after each unexpected error. A ``run`` that
        returns has finished its job: it is not started again."""
        self.fatal  # noqa: B018 - made now, on the running loop
        self._tasks[name] = asyncio.create_task(self._keep(name, run), name=name)

    async def _keep(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        backoff = Backoff(first_s=0.2, cap_s=5.0)
        failures: deque[float] = deque()
        while True:
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                now = time.monotonic()
                failures.append(now)
                while failures and now - failures[0] > self.window_s:
                    failures.popleft()
                if len(failures) >= self.max_failures:
                    log.critical("task %s failed %d times; giving up", name, len(failures))
                    if not self.fatal.done():
                        self.fatal.set_result(TaskFailed(f"{name} keeps failing: {exc!r}"))
                    return
                log.exception("task %s failed; restarting it in %.1fs", name, backoff.delay_s)
                await backoff.wait()

    def give_up(self, reason: str) -> None:
        """Resolve ``fatal`` now: a task found that the process must not go on."""
        log.critical("giving up: %s", reason)
        if not self.fatal.done():
            self.fatal.set_result(TaskFailed(reason))

    def running(self, name: str) -> bool:
        return name in self._tasks and not self._tasks[name].done()

    async def stop(self, *names: str) -> None:
        """Cancel the named tasks (all when none is named) and wait for them."""
        chosen = [self._tasks.pop(n) for n in (names or list(self._tasks)) if n in self._tasks]
        await cancel_and_wait(chosen)
