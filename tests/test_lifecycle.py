"""Lifecycles that clean up: a gateway whose channel fails to start undoes what it began, and the
runtime stops what it started in reverse order, every piece, even when one of them fails to stop."""

from __future__ import annotations

import contextlib
import gc
import io

import pytest

from frontdesk.bots import ConsoleChannel, Gateway, ReplyStream
from frontdesk.engine.queue import LocalQueue
from frontdesk.runtime import _enter, run_shell
from frontdesk.storage import Store


class Piece:
    """A service that records its start and stop, and can fail either."""

    def __init__(self, name: str, log: list[str], *, fail_start: bool = False,
                 fail_stop: bool = False) -> None:  # fmt: skip
        self.name, self.log = name, log
        self.fail_start, self.fail_stop = fail_start, fail_stop

    async def start(self, gateway: object = None) -> None:
        if self.fail_start:
            raise RuntimeError(f"{self.name} cannot start")
        self.log.append(f"start {self.name}")

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")
        if self.fail_stop:
            raise RuntimeError(f"{self.name} cannot stop")

    async def deliver(self, reply: ReplyStream) -> None:
        pass


async def test_a_gateway_whose_channel_fails_to_start_stops_what_it_started(
    make_settings,
) -> None:  # type: ignore[no-untyped-def]
    log: list[str] = []
    settings = make_settings()
    store = Store(settings.database_url)
    channels = [Piece("first", log), Piece("second", log, fail_start=True), Piece("third", log)]
    gateway = Gateway(settings, LocalQueue(), store, channels)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="second cannot start"):
        await gateway.start()
    assert log == ["start first", "stop first"]  # the third never started
    assert not gateway.tasks.running("gateway-replies")  # the reply pump is not left running
    await store.stop()


async def test_the_runtime_stops_in_reverse_and_every_piece_even_when_one_fails() -> None:
    log: list[str] = []
    pieces = [Piece("store", log), Piece("queue", log, fail_stop=True), Piece("worker", log)]
    with pytest.raises(RuntimeError, match="queue cannot stop"):
        async with contextlib.AsyncExitStack() as stack:
            for piece in pieces:
                await _enter(stack, piece)
    assert log == [
        "start store", "start queue", "start worker", "stop worker", "stop queue", "stop store",
    ]  # fmt: skip


async def test_a_second_gateway_under_a_running_ones_id_is_refused_in_one_line(
    make_settings, redis_url: str, queue_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from frontdesk.bots import gateway as gateway_module
    from frontdesk.engine.queue import RedisQueue
    from frontdesk.errors import ConfigError

    monkeypatch.setattr(gateway_module, "LEASE_WAIT_S", 1.5)
    settings = make_settings(redis_url=redis_url, queue_prefix=queue_prefix)
    store = Store(settings.database_url)
    await store.start(migrate=True)
    queues = [RedisQueue(redis_url, consumer=f"q{i}", prefix=queue_prefix) for i in range(2)]
    first = Gateway(settings, queues[0], store, [Piece("console", [])])  # type: ignore[list-item]
    second = Gateway(settings, queues[1], store, [Piece("console", [])])  # type: ignore[list-item]
    assert first.id == second.id == "console"  # the channels it runs: the same
    await first.start()
    try:
        with pytest.raises(ConfigError, match="another gateway runs as 'console'"):
            await second.start()
    finally:
        await first.stop()
        await store.stop()
        for queue in queues:
            await queue.stop()


async def test_a_process_serves_with_its_startup_heap_frozen_and_gives_it_back_as_it_stops(
    make_settings,
) -> None:  # type: ignore[no-untyped-def]
    """What a process made as it started is out of the garbage collector's way while it serves
    (``gc.freeze``), and the collector's again once it stops."""
    frozen_while_serving: list[int] = []

    class Probe(ConsoleChannel):
        async def run(self) -> None:
            frozen_while_serving.append(gc.get_freeze_count())

    gc.unfreeze()  # whatever an earlier test in this process may have left frozen
    assert gc.get_freeze_count() == 0
    await run_shell(make_settings(engine="fixed"), Probe(io.StringIO(), io.StringIO()))
    assert frozen_while_serving and frozen_while_serving[0] > 10_000  # modules, settings, ...
    assert gc.get_freeze_count() == 0
