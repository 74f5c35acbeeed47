"""``Batcher``: the calls of one loop iteration go to ``run`` together, and each caller gets its
own result or its own error."""

from __future__ import annotations

import asyncio

import pytest

from frontdesk.batching import Batcher


async def settle() -> None:
    """Let the loop run every callback and task that is ready (a batch's send is a few
    iterations away)."""
    for _ in range(10):
        await asyncio.sleep(0)


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def run(self, items: list[int]) -> list[int | Exception]:
        self.batches.append(items)
        await self.release.wait()
        return [ValueError(f"no {n}") if n < 0 else n * 10 for n in items]


async def test_the_calls_of_one_loop_iteration_are_one_batch_in_their_order() -> None:
    recorder = Recorder()
    batcher = Batcher(recorder.run)
    results = await asyncio.gather(*(batcher(n) for n in range(5)))
    assert results == [0, 10, 20, 30, 40]
    assert recorder.batches == [[0, 1, 2, 3, 4]]
    # a later call is a batch of its own
    assert await batcher(7) == 70
    assert recorder.batches[1:] == [[7]]


async def test_calls_made_while_a_batch_runs_make_the_next_batch() -> None:
    recorder = Recorder()
    recorder.release.clear()
    batcher = Batcher(recorder.run)
    first = asyncio.gather(batcher(1), batcher(2))
    await settle()
    assert recorder.batches == [[1, 2]]
    second = asyncio.gather(batcher(3))
    await settle()
    assert recorder.batches == [[1, 2], [3]]
    recorder.release.set()
    assert await first == [10, 20]
    assert await second == [30]


async def test_an_error_for_one_item_reaches_its_caller_only() -> None:
    batcher = Batcher(Recorder().run)
    results = await asyncio.gather(batcher(1), batcher(-2), batcher(3), return_exceptions=True)
    assert results[0] == 10 and results[2] == 30
    assert isinstance(results[1], ValueError) and str(results[1]) == "no -2"


async def test_a_failed_batch_fails_every_caller_of_it_and_not_the_next() -> None:
    calls = 0

    async def run(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("gone")
        return items

    batcher = Batcher(run)
    results = await asyncio.gather(batcher(1), batcher(2), return_exceptions=True)
    assert [type(r) for r in results] == [ConnectionError, ConnectionError]
    assert await batcher(3) == 3


async def test_a_run_that_answers_the_wrong_number_of_items_fails_its_callers() -> None:
    async def run(items: list[int]) -> list[int]:
        return items[1:]

    batcher = Batcher(run)
    with pytest.raises(RuntimeError, match="1 results for a batch of 2"):
        await asyncio.gather(batcher(1), batcher(2))


async def test_a_cancelled_caller_leaves_the_rest_of_its_batch_its_results() -> None:
    recorder = Recorder()
    recorder.release.clear()
    batcher = Batcher(recorder.run)
    one = asyncio.ensure_future(batcher(1))
    two = asyncio.ensure_future(batcher(2))
    await settle()
    assert recorder.batches == [[1, 2]]
    one.cancel()
    recorder.release.set()
    assert await two == 20
    assert one.cancelled()


async def test_a_result_given_later_reaches_its_caller_as_soon_as_it_is_done() -> None:
    """``run`` may answer an item with a future: its caller gets that future's result or error
    when it is done, while the others of the batch already have theirs."""
    later: dict[int, asyncio.Future[int]] = {}

    async def run(items: list[int]) -> list[int | asyncio.Future[int]]:
        loop = asyncio.get_running_loop()
        later.update({n: loop.create_future() for n in items if n > 1})
        return [later.get(n, n * 10) for n in items]  # type: ignore[misc]

    batcher = Batcher(run)
    calls = [asyncio.ensure_future(batcher(n)) for n in (1, 2, 3)]
    assert await calls[0] == 10
    await settle()
    assert not calls[1].done() and not calls[2].done()
    later[3].set_exception(ValueError("no 3"))
    with pytest.raises(ValueError, match="no 3"):
        await calls[2]
    assert not calls[1].done()
    later[2].set_result(20)
    assert await calls[1] == 20


async def test_a_caller_cancelled_before_its_later_result_leaves_the_rest_alone() -> None:
    later: list[asyncio.Future[int]] = []

    async def run(items: list[int]) -> list[asyncio.Future[int]]:
        loop = asyncio.get_running_loop()
        later.extend(loop.create_future() for _ in items)
        return later

    batcher = Batcher(run)
    calls = [asyncio.ensure_future(batcher(n)) for n in (1, 2)]
    await settle()
    calls[0].cancel()
    await settle()
    later[0].set_exception(ValueError("nobody hears this"))
    later[1].set_result(2)
    assert await calls[1] == 2
    assert calls[0].cancelled()
