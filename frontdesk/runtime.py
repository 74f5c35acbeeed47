"""Assembles the long-running pieces from settings and runs them: the embedded shell, a gateway, a
worker. Pieces start in dependency order and stop in reverse (an ``AsyncExitStack``), on end of
input, on /quit, or on SIGTERM/SIGINT; a stopping worker hands unfinished turns back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Iterator
from typing import Any

from frontdesk import metrics
from frontdesk.bots import Channel, ConsoleChannel, Gateway
from frontdesk.engine.backends import create_backend
from frontdesk.engine.queue import RedisQueue, TurnQueue, make_queue
from frontdesk.engine.worker import Worker
from frontdesk.errors import ConfigError, EngineUnavailable, FrontdeskError
from frontdesk.ops import Check, OpsServer
from frontdesk.settings import Settings
from frontdesk.storage import Store
from frontdesk.supervisor import TaskFailed

log = logging.getLogger(__name__)


async def _enter(stack: contextlib.AsyncExitStack, piece: Any, **start_options: object) -> None:
    """Start ``piece`` now and have ``stack`` stop it, in reverse order of starting."""
    await piece.start(**start_options)
    stack.push_async_callback(piece.stop)


async def open_store(stack: contextlib.AsyncExitStack, settings: Settings) -> Store:
    """The store, migrated first when running embedded (the first run creates the database),
    its hot statements ready for the first turns (``warm``)."""
    store = Store(settings.database_url, pool_size=settings.database_pool_size)
    await _enter(stack, store, migrate=settings.embedded, warm=True)
    return store


def _queue(settings: Settings, consumer: str) -> TurnQueue:
    return make_queue(
        settings.redis_url,
        consumer=consumer,
        prefix=settings.queue_prefix,
        maxlen=settings.queue_maxlen,
        claim_idle_ms=settings.queue_claim_idle_ms,
    )


async def _open_ops(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    queue: TurnQueue,
    store: Store,
    engine: Check | None = None,
) -> None:
    """``FRONTDESK_METRICS_PORT``: serve /healthz, /readyz and /metrics (``frontdesk.ops``).
    Started before the engine, so that the process answers as alive while a model loads, and
    as ready only once it has."""
    if settings.metrics_port is None:
        return

    async def redis() -> None:
        if isinstance(queue, RedisQueue):
            metrics.observe_queue(await queue.status())

    checks: dict[str, Check] = {"redis": redis, "database": store.ping}
    if engine is not None:
        checks["engine"] = engine
    await _enter(stack, OpsServer(settings.metrics_host, settings.metrics_port, checks))


async def _open_worker(
    stack: contextlib.AsyncExitStack, settings: Settings, queue: TurnQueue, store: Store
) -> Worker:
    backend = create_backend(settings)
    await _enter(stack, backend)
    worker = Worker(settings, queue, store, backend)
    await _enter(stack, worker)
    return worker


async def run_shell(settings: Settings, console: ConsoleChannel | None = None) -> None:
    """`frontdesk shell`: a console chat through gateway → queue → worker → engine → storage.
    Embedded (no Redis) it runs the worker too; with Redis a separate `frontdesk worker` answers."""
    console = console or ConsoleChannel()
    async with contextlib.AsyncExitStack() as stack:
        store = await open_store(stack, settings)
        queue = _queue(settings, settings.worker_id)
        await _enter(stack, queue)
        fatal = []
        if settings.embedded:
            fatal.append((await _open_worker(stack, settings, queue, store)).fatal)
        gateway = Gateway(settings, queue, store, [console])
        await _enter(stack, gateway)
        await _until_signal(console.run(), gateway.fatal, *fatal)
        for future in (gateway.fatal, *fatal):
            _raise_fatal(future)


async def run_worker(settings: Settings) -> None:
    """`frontdesk worker`: answer turns from Redis until SIGTERM."""
    if settings.embedded:
        raise ConfigError(
            "`frontdesk worker` needs FRONTDESK_REDIS_URL (the embedded mode is `frontdesk shell`)"
        )
    async with contextlib.AsyncExitStack() as stack:
        store = await open_store(stack, settings)
        queue = _queue(settings, settings.worker_id)
        await _enter(stack, queue)
        started: list[Worker] = []

        async def engine() -> None:
            if not started:
                raise EngineUnavailable("the engine is starting")
            await started[0].engine_ready()

        await _open_ops(stack, settings, queue, store, engine)
        worker = await _open_worker(stack, settings, queue, store)
        started.append(worker)
        log.warning(
            "worker %s is taking turns, up to %d at once", settings.worker_id, worker.concurrency
        )
        assert worker.dead is not None
        await _until_signal(asyncio.shield(worker.dead), worker.fatal)
        if worker.dead.done() and not worker.dead.cancelled():
            raise EngineUnavailable(
                f"{worker.dead.result()}; this worker's turns go back to the queue for another "
                "worker (restart this one)"
            )
        _raise_fatal(worker.fatal)


async def run_gateway(settings: Settings, channels: list[Channel]) -> None:
    """`frontdesk gateway`: run the configured channels until SIGTERM."""
    if settings.embedded:
        raise ConfigError("`frontdesk gateway` needs FRONTDESK_REDIS_URL, so workers can reach it")
    if not channels:
        raise ConfigError(
            "no channel is configured: set FRONTDESK_TELEGRAM_TOKEN or FRONTDESK_SLACK_BOT_TOKEN"
        )
    async with contextlib.AsyncExitStack() as stack:
        store = await open_store(stack, settings)
        queue = _queue(settings, settings.worker_id)
        await _enter(stack, queue)
        await _open_ops(stack, settings, queue, store)
        gateway = Gateway(settings, queue, store, channels)
        await _enter(stack, gateway)
        log.warning("gateway %s is running %s", gateway.id, ", ".join(c.name for c in channels))
        await _until_signal(None, gateway.fatal)
        _raise_fatal(gateway.fatal)


_frozen = 0  # how many ``startup_heap_frozen`` are open in this process


@contextlib.contextmanager
def startup_heap_frozen() -> Iterator[None]:
    """What a process made as it started (its modules, settings, compiled statements, a loaded
    model) lives as long as it does: while it serves, those objects are out of the garbage
    collector's way (``gc.freeze`` after a full collection, as vLLM's servers do after
    starting), and its collections walk only what its turns made. Without this the collector
    took about a fifth of a turn's CPU in ``bench/pipeline.py``, over half of it walking those.
    Given back to the collector as it stops (``gc.unfreeze``: a process that starts again, as a
    test does, frees what it dropped). Nested, only the outermost freezes and gives back."""
    global _frozen
    if not _frozen:
        gc.collect()
        gc.freeze()
    _frozen += 1
    try:
        yield
    finally:
        _frozen -= 1
        if not _frozen:
            gc.unfreeze()


def _raise_fatal(fatal: asyncio.Future[TaskFailed]) -> None:
    if fatal.done() and not fatal.cancelled():
        raise FrontdeskError(f"{fatal.result()}; stopping (restart this process)")


async def _until_signal(main: Awaitable[object] | None, *fatal: asyncio.Future[TaskFailed]) -> None:
    """Wait for ``main`` (a coroutine) to finish, or forever when None, or until SIGTERM/SIGINT,
    or until one of ``fatal`` (a part of the process died for good) is resolved; everything
    started, with the startup heap frozen meanwhile (``startup_heap_frozen``)."""
    with startup_heap_frozen():
        await _serve(main, *fatal)


async def _serve(main: Awaitable[object] | None, *fatal: asyncio.Future[TaskFailed]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    waiters: list[asyncio.Future[object]] = [asyncio.ensure_future(stop.wait())]
    if main is not None:
        waiters.append(asyncio.ensure_future(main))
    waiters.extend(asyncio.ensure_future(asyncio.shield(f)) for f in fatal)
    try:
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in waiters:
            task.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
