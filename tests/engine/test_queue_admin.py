"""The queue's admin side against a real Redis: `RedisQueue.status` and `retry_dead`, and the
`frontdesk queue status|retry-dead` commands as an operator runs them."""

from __future__ import annotations

import json

import pytest
import redis
import typer
from redis.exceptions import ConnectionError as RedisConnectionError
from typer.testing import CliRunner

from frontdesk.engine.cli import queue
from frontdesk.engine.queue import RedisQueue
from frontdesk.errors import QueueUnavailable
from frontdesk.wire import Turn

# The queue app mounted as frontdesk/cli.py mounts it.
app = typer.Typer(pretty_exceptions_enable=False)
app.add_typer(queue, name="queue")
runner = CliRunner()
NOTHING_LISTENS = "redis://127.0.0.1:1/0"


async def open_queue(url: str, prefix: str, consumer: str = "w") -> RedisQueue:
    q = RedisQueue(url, consumer=consumer, prefix=prefix)
    await q.start(warm=False)
    return q


async def dead_letter_all(q: RedisQueue, count: int, reason: str = "delivered 4 times") -> list:
    """Read ``count`` turns as a worker does and dead-letter them, oldest first."""
    taken = await q.receive(count, block_ms=500)
    assert len(taken) == count
    for delivery in taken:
        await q.dead_letter(delivery, reason)
    return taken


# -- RedisQueue.status ---------------------------------------------------------------------------


async def test_status_of_a_queue_no_worker_started_is_zeros_and_creates_nothing(
    redis_url: str, queue_prefix: str
) -> None:
    q = RedisQueue(redis_url, consumer="admin", prefix=queue_prefix)
    s = await q.status()
    assert (s.length, s.pending, s.lag, s.entries_read, s.dead) == (0, 0, 0, 0, 0)
    assert s.consumers == () and s.oldest_pending_id is None and not s.group_exists
    assert await q.redis.exists(q.turns_key, q.dead_key) == 0
    await q.stop()


async def test_status_counts_queued_pending_and_dead_turns(
    redis_url: str, queue_prefix: str
) -> None:
    q = await open_queue(redis_url, queue_prefix, "worker-a")
    s = await q.status()
    assert (s.length, s.pending, s.lag, s.dead, s.consumers) == (0, 0, 0, 0, ())
    assert s.group_exists and s.last_delivered_id == "0-0"

    for message_id in range(3):
        await q.submit(Turn(1, message_id, "gw"))
    s = await q.status()
    assert (s.length, s.pending, s.lag) == (3, 0, 3)  # entries_read: None until a first read

    [held] = await q.receive(1, block_ms=500)
    await q.release(held)  # a failed try: the turn stays pending until reclaimed
    s = await q.status()
    assert (s.length, s.pending, s.lag, s.entries_read) == (3, 1, 2, 1)
    assert s.last_delivered_id == held.entry_id == s.oldest_pending_id
    assert s.oldest_pending_idle_ms is not None and s.oldest_pending_idle_ms >= 0
    [consumer] = s.consumers
    assert consumer.name == "worker-a" and consumer.pending == 1 and consumer.idle_ms >= 0

    await q.dead_letter(held, "delivered 4 times")
    s = await q.status()
    assert (s.length, s.pending, s.lag, s.dead) == (3, 0, 2, 1)
    assert s.oldest_pending_id is None and s.oldest_pending_idle_ms is None
    await q.stop()


async def test_status_on_unreachable_redis_is_queue_unavailable() -> None:
    q = RedisQueue(NOTHING_LISTENS, consumer="admin")
    with pytest.raises(QueueUnavailable, match="cannot read the queue status"):
        await q.status()
    await q.stop()


# -- RedisQueue.retry_dead -----------------------------------------------------------------------


async def test_retry_dead_puts_turns_back_for_a_worker(redis_url: str, queue_prefix: str) -> None:
    q = await open_queue(redis_url, queue_prefix)
    turns = [Turn(1, message_id, "gw", enqueued_at=1000.0) for message_id in range(2)]
    for turn in turns:
        await q.submit(turn)
    await dead_letter_all(q, 2)

    assert await q.retry_dead() == 2
    assert await q.redis.xlen(q.dead_key) == 0
    again = await q.receive(10, block_ms=500)
    assert [d.turn.turn_id for d in again if d.turn] == [t.turn_id for t in turns]
    assert all(d.deliveries == 1 for d in again)  # a fresh entry: the count starts over
    assert all(d.turn and d.turn.enqueued_at > 1000.0 for d in again)
    assert all(set(d.fields) == {"v", "d"} for d in again)  # no dead-letter bookkeeping
    assert await q.retry_dead() == 0
    await q.stop()


async def test_retry_dead_takes_the_oldest_first_up_to_the_limit(
    redis_url: str, queue_prefix: str
) -> None:
    q = await open_queue(redis_url, queue_prefix)
    for message_id in range(3):
        await q.submit(Turn(1, message_id, "gw"))
    await dead_letter_all(q, 3)

    assert await q.retry_dead(limit=2) == 2
    again = await q.receive(10, block_ms=500)
    assert [d.turn.message_id for d in again if d.turn] == [0, 1]
    assert (await q.status()).dead == 1
    await q.stop()


async def test_retry_dead_leaves_entries_a_worker_cannot_decode(
    redis_url: str, queue_prefix: str
) -> None:
    q = await open_queue(redis_url, queue_prefix)
    await q.redis.xadd(q.turns_key, {"v": "1", "d": "{not json"})
    await q.submit(Turn(1, 5, "gw"))
    await dead_letter_all(q, 2)

    assert await q.retry_dead() == 1
    [left] = await q.redis.xrange(q.dead_key)
    assert left[1]["d"] == "{not json"
    [again] = await q.receive(10, block_ms=500)
    assert again.turn is not None and again.turn.message_id == 5
    await q.stop()


async def test_retry_dead_never_loses_a_turn_when_it_stops_half_way(
    redis_url: str, queue_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = await open_queue(redis_url, queue_prefix)
    await q.submit(Turn(1, 8, "gw"))
    await dead_letter_all(q, 1)

    async def lost_connection(*_args: object) -> int:
        raise RedisConnectionError("connection lost")

    monkeypatch.setattr(q.redis, "xdel", lost_connection)
    with pytest.raises(QueueUnavailable, match="connection lost"):
        await q.retry_dead()
    # Queued again and still dead-lettered: a duplicate (answered once), not a loss.
    [again] = await q.receive(10, block_ms=500)
    assert again.turn is not None and again.turn.message_id == 8
    assert await q.redis.xlen(q.dead_key) == 1
    await q.stop()


# -- the commands --------------------------------------------------------------------------------


@pytest.fixture
async def two_dead(redis_url: str, queue_prefix: str) -> str:
    """A queue with four turns: two dead-lettered, one pending, one not read yet."""
    q = await open_queue(redis_url, queue_prefix, "worker-a")
    for message_id in range(4):
        await q.submit(Turn(1, message_id, "gw"))
    await dead_letter_all(q, 2)
    await q.receive(1, block_ms=500)
    await q.stop()
    return queue_prefix


def invoke(prefix: str, *args: str, url: str, answer: str = ""):  # type: ignore[no-untyped-def]
    env = {"FRONTDESK_REDIS_URL": url, "FRONTDESK_QUEUE_PREFIX": prefix, "COLUMNS": "200"}
    return runner.invoke(app, ["queue", *args], env=env, input=answer)


def dead_count(redis_url: str, prefix: str) -> int:
    with redis.Redis.from_url(redis_url) as client:
        return client.xlen(f"{prefix}:turns:dead")


def test_status_json_and_text(redis_url: str, two_dead: str) -> None:
    result = invoke(two_dead, "status", "--json", url=redis_url)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["length"], data["pending"], data["lag"], data["dead"]) == (4, 1, 1, 2)
    assert data["stream"] == f"{two_dead}:turns" and data["group_exists"] is True
    [consumer] = data["consumers"]
    assert consumer["name"] == "worker-a" and consumer["pending"] == 1

    table = invoke(two_dead, "status", url=redis_url)
    assert table.exit_code == 0, table.output
    text = " ".join(table.stdout.split())
    assert "queued (stream length) │ 4" in text and "dead letters │ 2" in text
    assert "worker-a │ 1" in text


def test_retry_dead_with_yes_prints_json(redis_url: str, two_dead: str) -> None:
    result = invoke(two_dead, "retry-dead", "--yes", "--json", url=redis_url)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"requeued": 2}
    assert dead_count(redis_url, two_dead) == 0
    status = json.loads(invoke(two_dead, "status", "--json", url=redis_url).stdout)
    assert (status["length"], status["lag"]) == (6, 3)


def test_retry_dead_asks_first_and_no_requeues_nothing(redis_url: str, two_dead: str) -> None:
    result = invoke(two_dead, "retry-dead", url=redis_url, answer="n\n")
    assert result.exit_code == 0, result.output
    assert "2 turns dead-lettered" in result.stderr and "Re-queue all of them?" in result.stderr
    assert result.stdout.splitlines()[-1] == "nothing re-queued"  # after the echoed answer
    assert dead_count(redis_url, two_dead) == 2


def test_retry_dead_confirmed_with_a_limit(redis_url: str, two_dead: str) -> None:
    result = invoke(two_dead, "retry-dead", "--limit", "1", url=redis_url, answer="y\n")
    assert result.exit_code == 0, result.output
    assert "Re-queue the oldest 1?" in result.stderr
    assert result.stdout.splitlines()[-1] == "re-queued 1 of 2 dead-lettered turns"
    assert dead_count(redis_url, two_dead) == 1


def test_retry_dead_with_nothing_dead_says_so(redis_url: str, queue_prefix: str) -> None:
    result = invoke(queue_prefix, "retry-dead", url=redis_url)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "no dead-lettered turns" and result.stderr == ""
    json_result = invoke(queue_prefix, "retry-dead", "--json", url=redis_url)
    assert json.loads(json_result.stdout) == {"requeued": 0}


@pytest.mark.parametrize("command", ["status", "retry-dead"])
def test_without_a_redis_url_is_one_line_and_exit_2(command: str) -> None:
    result = invoke("fd", command, url="")
    assert result.exit_code == 2
    assert result.stderr == (
        "error: `frontdesk queue` needs FRONTDESK_REDIS_URL: embedded mode keeps its queue in "
        "memory\n"
    )


@pytest.mark.parametrize("command", ["status", "retry-dead"])
def test_unreachable_redis_is_one_line_and_exit_1(command: str) -> None:
    result = invoke(
        "fd", command, "--yes" if command == "retry-dead" else "--json", url=NOTHING_LISTENS
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot read the queue status from Redis at")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert result.stdout == ""
