"""The Redis Streams queue against a real Redis: at-least-once delivery, reclaim, dead letters."""

from __future__ import annotations

import asyncio
import time
from datetime import date, timedelta

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from frontdesk.engine.queue import GROUP, RedisQueue
from frontdesk.wire import ReplyDelta, Turn


def writes_of(q: RedisQueue, monkeypatch) -> list[list[str]]:  # type: ignore[no-untyped-def]
    """Each pipeline ``q`` sends to Redis from now on, as its commands' names in order."""
    sent: list[list[str]] = []
    make = q.redis.pipeline

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        pipe = make(*args, **kwargs)
        execute = pipe.execute

        async def recorded(*args, **kwargs):  # type: ignore[no-untyped-def]
            sent.append([str(command[0][0]).upper() for command in pipe.command_stack])
            return await execute(*args, **kwargs)

        pipe.execute = recorded
        return pipe

    monkeypatch.setattr(q.redis, "pipeline", recording)
    return sent


async def open_queue(url: str, prefix: str, consumer: str, claim_idle_ms: int = 200) -> RedisQueue:
    queue = RedisQueue(url, consumer=consumer, prefix=prefix, claim_idle_ms=claim_idle_ms)
    await queue.start()
    return queue


async def test_turn_of_a_consumer_that_died_unacked_is_reclaimed(
    redis_url: str, queue_prefix: str
) -> None:
    a = await open_queue(redis_url, queue_prefix, "worker-a")
    b = await open_queue(redis_url, queue_prefix, "worker-b")
    turn = Turn(conversation_id=1, message_id=7, gateway="gw")
    await a.submit(turn)

    taken = await a.receive(10, block_ms=500)
    assert [d.turn for d in taken] == [turn] and taken[0].deliveries == 1
    await a.stop()  # worker-a "dies" without acking

    assert await b.receive(10, block_ms=50) == []  # not idle long enough yet
    await asyncio.sleep(0.3)
    reclaimed: list = []
    for _ in range(20):
        reclaimed = await b.receive(10, block_ms=50)
        if reclaimed:
            break
        await asyncio.sleep(0.1)
    assert [d.turn for d in reclaimed] == [turn]
    assert reclaimed[0].deliveries == 2
    await b.ack(reclaimed[0])
    pending = await b.redis.xpending(b.turns_key, GROUP)
    assert pending["pending"] == 0
    await b.stop()


async def test_heartbeat_keeps_a_long_turn_from_being_reclaimed(
    redis_url: str, queue_prefix: str
) -> None:
    a = await open_queue(redis_url, queue_prefix, "worker-a")
    b = await open_queue(redis_url, queue_prefix, "worker-b")
    await a.submit(Turn(1, 1, "gw"))
    [held] = await a.receive(1, block_ms=500)
    for _ in range(6):  # 0.6 s of work, three times the claim timeout, touched every 0.1 s
        await asyncio.sleep(0.1)
        await a.touch([held])
        assert await b.receive(10, block_ms=1) == []
    await a.ack(held)
    await a.stop()
    await b.stop()


async def test_dead_letter_moves_the_entry_and_acks_it(redis_url: str, queue_prefix: str) -> None:
    q = await open_queue(redis_url, queue_prefix, "w")
    await q.submit(Turn(3, 9, "gw"))
    [d] = await q.receive(1, block_ms=500)
    await q.dead_letter(d, "delivered 4 times")
    dead = await q.redis.xrange(q.dead_key)
    assert len(dead) == 1
    fields = dead[0][1]
    assert fields["reason"] == "delivered 4 times" and fields["entry_id"] == d.entry_id
    assert (await q.redis.xpending(q.turns_key, GROUP))["pending"] == 0
    await q.stop()


async def test_undecodable_entry_is_delivered_without_a_turn(
    redis_url: str, queue_prefix: str
) -> None:
    q = await open_queue(redis_url, queue_prefix, "w")
    await q.redis.xadd(q.turns_key, {"v": "1", "d": "{not json"})
    [d] = await q.receive(1, block_ms=500)
    assert d.turn is None and d.fields["d"] == "{not json"
    await q.stop()


async def test_replies_arrive_in_order_on_the_owning_gateway_stream(
    redis_url: str, queue_prefix: str
) -> None:
    q = await open_queue(redis_url, queue_prefix, "w")
    for seq in range(5):
        await q.publish("gw-1", ReplyDelta("t", seq, f"part{seq}", done=seq == 4))
    await q.publish("gw-2", ReplyDelta("other", 0, "not mine", done=True))
    got = []
    async for _entry_id, delta in q.replies("gw-1", after="0-0"):
        got.append(delta)
        if delta.done:
            break
    assert [d.text for d in got] == [f"part{i}" for i in range(5)]
    assert await q.redis.ttl(q.reply_prefix + "gw-1") > 0
    await q.stop()


async def test_the_queue_reads_redis_replies_with_hiredis_in_c(
    redis_url: str, queue_prefix: str
) -> None:
    """hiredis is a dependency (redis[hiredis]): the queue's connections parse what Redis sends
    in C, a ninth of the CPU an entry of redis-py's own parser (``bench/pipeline.py --parsers``),
    and a turn and a reply read through it arrive whole."""
    from redis._parsers import _AsyncHiredisParser

    q = await open_queue(redis_url, queue_prefix, "w")
    connection = await q.redis.connection_pool.get_connection()
    try:
        assert isinstance(connection._parser, _AsyncHiredisParser)
    finally:
        await q.redis.connection_pool.release(connection)
    route = {"platform": "telegram", "chat_id": 7, "text": "é ✓ 😀"}
    await q.submit(Turn(1, 2, "gw", route=route))
    [d] = await q.receive(1, block_ms=500)
    assert d.turn is not None and d.turn.route == route
    await q.publish("gw", ReplyDelta("t", 0, "Grüße 😀", done=True))
    async for _entry_id, delta in q.replies("gw", after="0-0"):
        assert delta.text == "Grüße 😀" and delta.done
        break
    await q.stop()


async def test_consumer_group_is_recreated_after_redis_loses_it(
    redis_url: str, queue_prefix: str
) -> None:
    q = await open_queue(redis_url, queue_prefix, "w")
    client = aioredis.from_url(redis_url)
    await client.delete(q.turns_key)  # what a restart without persistence does
    await client.aclose()
    assert await q.receive(1, block_ms=10) == []
    await q.submit(Turn(1, 2, "gw"))
    [d] = await q.receive(1, block_ms=500)
    assert d.turn is not None and d.turn.message_id == 2
    await q.stop()


async def test_a_heartbeat_never_takes_back_an_entry_another_worker_reclaimed(
    redis_url: str, queue_prefix: str
) -> None:
    slow = await open_queue(redis_url, queue_prefix, "slow")
    other = await open_queue(redis_url, queue_prefix, "other")
    await slow.submit(Turn(1, 1, "gw"))
    [held] = await slow.receive(1, block_ms=500)
    await asyncio.sleep(0.3)  # the slow worker stalls past the claim timeout
    [taken] = await other.receive(1, block_ms=10)
    assert taken.entry_id == held.entry_id and taken.deliveries == 2

    assert await slow.touch([held]) == {held.entry_id}  # lost, and not taken back
    assert await other.touch([taken]) == set()
    assert not await slow.ack(held)  # a fenced worker cannot ack the other's entry
    pending = await other.redis.xpending_range(other.turns_key, GROUP, "-", "+", 10)
    assert [(p["message_id"], p["consumer"]) for p in pending] == [(held.entry_id, "other")]
    assert await other.ack(taken)
    for q in (slow, other):
        await q.stop()


async def test_a_message_is_queued_once_while_its_turn_is_live(
    redis_url: str, queue_prefix: str
) -> None:
    q = await open_queue(redis_url, queue_prefix, "w")
    assert await q.submit(Turn(5, 50, "gw"))
    assert not await q.submit(Turn(5, 50, "gw"))  # a retry, a sweep: the live turn answers it
    [d] = await q.receive(5, block_ms=500)
    assert not await q.submit(Turn(5, 50, "gw"))  # pending is live too
    assert await q.ack(d)
    assert await q.submit(Turn(5, 50, "gw"))  # acked: a new turn may be queued
    [again] = await q.receive(5, block_ms=500)

    # a sweep leaves alone a message whose conversation a worker is answering
    assert await q.lease(6, ttl_ms=5000)
    assert not await q.submit(Turn(6, 60, "gw"), sweep=True)
    assert await q.submit(Turn(7, 70, "gw"), sweep=True)
    await q.unlease(6)
    assert await q.submit(Turn(6, 60, "gw"), sweep=True)

    # an entry trimmed away (MAXLEN ~) or lost with Redis's data is not live any more
    await q.redis.xdel(q.turns_key, again.entry_id)
    assert await q.submit(Turn(5, 50, "gw"))
    await q.stop()


async def test_a_conversation_lease_is_held_by_one_worker_and_released_only_by_it(
    redis_url: str, queue_prefix: str
) -> None:
    ttl = 1500  # wide enough that a busy CI machine cannot let a renewed lease lapse
    a = await open_queue(redis_url, queue_prefix, "a")
    b = await open_queue(redis_url, queue_prefix, "b")
    assert await a.lease(9, ttl_ms=ttl)
    assert not await b.lease(9, ttl_ms=ttl)
    await b.unlease(9)  # not b's to release
    assert not await b.lease(9, ttl_ms=ttl)
    await asyncio.sleep(1.0)
    assert await a.renew([9], ttl_ms=ttl) == set()
    await asyncio.sleep(1.0)
    assert not await b.lease(9, ttl_ms=ttl)  # renewed: still a's
    await asyncio.sleep(2.0)
    assert await b.lease(9, ttl_ms=ttl)  # lapsed: b takes it
    assert await a.renew([9], ttl_ms=ttl) == {9}  # and a learns that it lost it
    for q in (a, b):
        await q.stop()


async def test_a_role_has_one_holder_and_each_new_holder_a_larger_fencing_token(
    redis_url: str, queue_prefix: str
) -> None:
    q = await open_queue(redis_url, queue_prefix, "w")
    ttl = 1500
    first = await q.hold_role("telegram:poller:1", "a", ttl)
    assert first > 0
    assert await q.hold_role("telegram:poller:1", "b", ttl) == 0  # a holds it
    assert await q.hold_role("telegram:poller:1", "a", ttl) == first  # renewed: same term
    await q.let_role_go("telegram:poller:1", "b")  # not b's to give up
    assert await q.hold_role("telegram:poller:1", "b", ttl) == 0
    await q.let_role_go("telegram:poller:1", "a")
    second = await q.hold_role("telegram:poller:1", "b", ttl)
    assert second > first
    await asyncio.sleep(2.0)  # b stops renewing: the lease lapses
    third = await q.hold_role("telegram:poller:1", "a", ttl)
    assert third > second
    assert await q.hold_role("telegram:poller:1", "b", ttl) == 0  # b learns it lost the role
    assert await q.hold_role("telegram:poller:2", "b", ttl) > 0  # another bot, another role
    await q.stop()


async def test_a_users_daily_tokens_are_counted_per_utc_day_and_kept_two_days(
    redis_url: str, queue_prefix: str
) -> None:
    q = await open_queue(redis_url, queue_prefix, "w")
    today = date(2026, 12, 3)
    await q.spend_tokens("telegram:1", today, 120)
    await q.spend_tokens("telegram:1", today, 30)
    assert await q.tokens_spent("telegram:1", today) == 150
    assert await q.tokens_spent("telegram:1", today + timedelta(days=1)) == 0  # a new day
    assert await q.tokens_spent("telegram:2", today) == 0
    ttl = await q.redis.ttl(f"{q.budget_prefix}{today.isoformat()}:telegram:1")
    assert 2 * 86_400 - 60 < ttl <= 2 * 86_400  # then Redis forgets it
    await q.stop()


async def test_a_chat_reserved_ahead_does_not_hold_up_the_bots_other_chats(
    redis_url: str, queue_prefix: str
) -> None:
    """A Telegram call reserves its chat's moment and the bot's (its 30 a second) together. A
    group's next moment 3 s ahead must not move the bot's one pointer there: a private chat's
    call in the meantime goes at once."""
    q = await open_queue(redis_url, queue_prefix, "w")
    bot = ("telegram:bot:1", 1 / 28, 0.0)
    group = ("telegram:chat:-100", 3.0, 0.1)
    assert await q.slot([group, bot], "gw-1") == 0  # the group's first call
    started = time.monotonic()
    second = asyncio.create_task(q.slot([group, bot], "gw-2"))  # 3.1 s later
    await asyncio.sleep(0.2)
    private = await q.slot([("telegram:chat:7", 1.0, 0.1), bot], "gw-1")
    assert private < 0.1  # not behind the group's reservation
    await second
    assert time.monotonic() - started >= 3.0  # the group's own pace is kept
    await q.stop()


async def test_the_shared_update_budget_keeps_room_for_every_gateways_finals(
    redis_url: str, queue_prefix: str
) -> None:
    """Slack's Tier 3 budget in Redis (3 calls in any 1 s here): an interim update is granted
    only while the room covers the finals every gateway owes; a final waits for room; a 429
    holds all; a gateway that stops saying what it owes (dead) lapses after one window."""
    q = await open_queue(redis_url, queue_prefix, "w")
    place, window = "slack:updates:T1", 1.0

    async def ask(owner: str, owed: int, kind: str) -> float | None:
        return await q.budget(place, 3, window, owner, owed, kind=kind)

    assert await ask("gw-a", 1, "owed") is not None  # gw-a streams one reply
    assert await ask("gw-b", 1, "interim") == 0  # room 3 > owed 2: granted
    assert await ask("gw-b", 1, "interim") is None  # room 2, owed 2: kept for the finals
    assert await ask("gw-a", 1, "final") == 0
    assert await ask("gw-b", 1, "final") == 0
    wait = await ask("gw-b", 0, "final")  # full: the oldest leaves the window first
    assert wait is not None and 0 < wait <= window
    await q.hold_budget(place, 0.5, window)  # a 429 with Retry-After 0.5 s
    await asyncio.sleep(window)  # the window empties; gw-a, still owing 1, says nothing more
    held = await ask("gw-b", 0, "final")
    assert held == 0  # the hold is over by now
    assert await ask("gw-b", 0, "interim") == 0  # gw-a's owed 1 still counts: room 2 > 1
    await asyncio.sleep(window)  # gw-a's count lapses (dead gateway)
    for _ in range(3):
        assert await ask("gw-b", 0, "interim") == 0  # all of the room is gw-b's
    await q.hold_budget(place, 5.0, window)
    assert await ask("gw-b", 0, "interim") is None  # held: no interim
    held = await ask("gw-b", 0, "final")
    assert held is not None and 4.0 < held <= 5.0  # a final waits the hold out
    await q.stop()


async def test_a_gone_gateway_is_forgotten_only_once_it_left_no_reply_in_progress(
    redis_url: str, queue_prefix: str
) -> None:
    """Gateway ids (a pod name each, say) do not pile up: one that is gone and left no record
    leaves the set the take-over reads; one that is alive, or left a reply, stays."""
    q = await open_queue(redis_url, queue_prefix, "w")
    for gateway in ("alive", "left-a-reply", "gone"):
        await q.announce(gateway, ["telegram", "slack"], ttl_s=20)
    assert await q.hold_gateway("alive", "owner", 5000)
    await q.track("left-a-reply", "m1", {"route": {"platform": "telegram"}, "posted": []})
    for gateway in ("alive", "left-a-reply", "gone"):
        await q.forget_gateway(gateway, ["telegram", "slack"])
    for platform in ("telegram", "slack"):
        assert await q.gateway_ids(platform) == {"alive", "left-a-reply"}
    await q.untrack("left-a-reply", "m1")
    assert await q.forget_gateway("left-a-reply", ["telegram", "slack"])
    assert await q.gateway_ids("telegram") == {"alive"}
    await q.stop()


async def test_a_shown_replys_record_is_forgotten_and_the_reply_cursor_saved_in_one_command(
    redis_url: str, queue_prefix: str, monkeypatch
) -> None:
    """Once a reply is shown, the gateway forgets its delivery record and saves how far it read
    its reply stream in one command; forgetting a record without a cursor (another gateway's)
    leaves the cursor as it was. After Redis forgot its scripts (a restart) both still happen."""
    q = await open_queue(redis_url, queue_prefix, "w")
    for turn_id in ("m1", "m2", "m3"):
        await q.track("gw", turn_id, {"route": {"platform": "telegram"}, "posted": []})
    sent = writes_of(q, monkeypatch)
    await q.untrack("gw", "m1", cursor="7-0")
    assert sent == [["EVALSHA"]]
    assert set(await q.tracked("gw")) == {"m2", "m3"}
    assert await q.cursor("gw") == "7-0"
    assert 0 < await q.redis.ttl(q.cursor_prefix + "gw") <= 24 * 3600
    await q.untrack("gw", "m2")
    assert set(await q.tracked("gw")) == {"m3"}
    assert await q.cursor("gw") == "7-0"
    await q.redis.script_flush()  # as after a restart of Redis
    await q.untrack("gw", "m3", cursor="9-0")
    assert await q.tracked("gw") == {}
    assert await q.cursor("gw") == "9-0"
    await q.stop()


async def test_the_replies_acks_and_leases_of_many_turns_at_once_share_one_round_trip(
    redis_url: str, queue_prefix: str, monkeypatch
) -> None:
    q = await open_queue(redis_url, queue_prefix, "w")
    sent = writes_of(q, monkeypatch)
    await q.redis.set(q.reply_prefix + "not-a-stream", "x")
    results = await asyncio.gather(
        *(q.publish("gw", ReplyDelta(f"t{n}", seq, f"{n}.{seq}", done=seq == 2))
          for seq in range(3) for n in range(20)),
        *(q.lease(conversation, ttl_ms=5000) for conversation in range(10)),
        q.publish("not-a-stream", ReplyDelta("lost", 0, "x", done=True)),
        return_exceptions=True,
    )  # fmt: skip
    assert len(sent) == 1  # 60 deltas, 10 leases and the refused delta: one write to Redis
    assert results[:60] == [None] * 60 and results[60:70] == [True] * 10
    assert "WRONGTYPE" in str(results[70])  # only the command Redis refused failed, for its caller
    got: dict[str, list[str]] = {}
    async for _entry_id, delta in q.replies("gw", after="0-0"):
        got.setdefault(delta.turn_id, []).append(delta.text)
        if sum(map(len, got.values())) == 60:
            break
    assert got == {f"t{n}": [f"{n}.{seq}" for seq in range(3)] for n in range(20)}  # in order
    assert await q.redis.ttl(q.reply_prefix + "gw") > 0
    await q.stop()


async def test_an_ack_and_a_release_still_work_after_redis_forgot_its_scripts(
    redis_url: str, queue_prefix: str
) -> None:
    q = await open_queue(redis_url, queue_prefix, "w")
    await q.submit(Turn(conversation_id=1, message_id=7, gateway="gw"))
    [delivery] = await q.receive(10, block_ms=500)
    assert await q.lease(1, ttl_ms=5000)
    await q.redis.script_flush()  # as after a restart of Redis
    assert await q.ack(delivery)
    await q.unlease(1)
    assert (await q.redis.xpending(q.turns_key, GROUP))["pending"] == 0
    assert await q.redis.get(q.lease_prefix + "1") is None
    await q.stop()


async def test_a_turn_and_its_delivery_record_go_in_one_command_the_record_first(
    redis_url: str, queue_prefix: str, monkeypatch
) -> None:
    """The gateway's record of where a reply goes is in Redis before the turn can be taken (the
    script that queues the turn writes it first), and both cost one command; the records expire
    if the gateway goes for good. After Redis forgot its scripts (a restart) both are still
    written, and a live turn is still not queued twice, though its record is written again."""
    q = await open_queue(redis_url, queue_prefix, "w")
    sent = writes_of(q, monkeypatch)
    record = {"route": {"platform": "telegram", "chat": "c1"}, "after": "0-0", "posted": []}
    turn = Turn(conversation_id=1, message_id=7, gateway="gw")
    assert await q.submit(turn, tracked=("gw", record))
    assert sent == [["EVALSHA"]]
    assert await q.tracked("gw") == {turn.turn_id: record}
    assert 0 < await q.redis.ttl(q.deliveries_prefix + "gw") <= 24 * 3600
    [delivery] = await q.receive(10, block_ms=500)
    assert delivery.turn == turn
    await q.redis.script_flush()  # as after a restart of Redis
    other = Turn(conversation_id=2, message_id=8, gateway="gw")
    assert await q.submit(other, tracked=("gw", {**record, "posted": ["p1"]}))
    moved = {**record, "after": "5-0"}
    assert not await q.submit(turn, tracked=("gw", moved))  # still live: not queued again
    assert await q.tracked("gw") == {
        turn.turn_id: moved,
        other.turn_id: {**record, "posted": ["p1"]},
    }
    [taken] = await q.receive(10, block_ms=500)
    assert taken.turn == other
    await q.stop()


async def test_a_turns_ack_and_its_conversations_release_go_in_one_command(
    redis_url: str, queue_prefix: str, monkeypatch
) -> None:
    """A settled turn's ack and its lease's release cost one command; after it the turn is no
    longer pending and another worker may take the conversation. After Redis forgot its
    scripts (a restart) both still happen. A turn another worker took over is not acked, and
    the lease is released all the same."""
    q = await open_queue(redis_url, queue_prefix, "w")
    other = await open_queue(redis_url, queue_prefix, "other")
    for message_id in (7, 8):
        assert await q.submit(Turn(conversation_id=1, message_id=message_id, gateway="gw"))
        [delivery] = await q.receive(10, block_ms=500)
        assert await q.lease(1, ttl_ms=60_000)
        assert not await other.lease(1, ttl_ms=60_000)
        if message_id == 8:
            await q.redis.script_flush()  # as after a restart of Redis
        sent = writes_of(q, monkeypatch)
        assert await q.ack(delivery, unlease=1)
        if message_id == 7:
            assert sent == [["EVALSHA"]]
        assert await q.redis.xpending(q.turns_key, GROUP) == {
            "pending": 0, "min": None, "max": None, "consumers": []
        }  # fmt: skip
        assert await other.lease(1, ttl_ms=60_000)  # released: another worker may answer it
        await other.unlease(1)
    assert await q.submit(Turn(conversation_id=1, message_id=9, gateway="gw"))
    [delivery] = await q.receive(10, block_ms=500)
    assert await q.lease(1, ttl_ms=60_000)
    await other.redis.xclaim(q.turns_key, GROUP, "other", 0, [delivery.entry_id])  # taken over
    assert not await q.ack(delivery, unlease=1)
    assert (await q.redis.xpending(q.turns_key, GROUP))["consumers"] == [
        {"name": "other", "pending": 1}
    ]
    assert await other.lease(1, ttl_ms=60_000)  # released though the ack was not this one's
    for each in (q, other):
        await each.stop()


async def test_a_turns_last_reply_delta_goes_with_its_ack_in_one_command_or_neither_happens(
    redis_url: str, queue_prefix: str, monkeypatch
) -> None:
    """A settled turn's last reply delta, its ack and its lease's release: one command, after
    which the gateway reads the delta and the turn is no longer pending. When Redis refuses
    the delta (here the gateway's reply stream is not a stream), nothing of it happens: the
    turn stays pending, to be answered again, and its lease is the worker's to release."""
    q = await open_queue(redis_url, queue_prefix, "w")
    assert await q.submit(Turn(conversation_id=1, message_id=7, gateway="gw"))
    [delivery] = await q.receive(10, block_ms=500)
    assert await q.lease(1, ttl_ms=60_000)
    sent = writes_of(q, monkeypatch)
    last = ReplyDelta("m7", 0, "We open at nine.", done=True, attempt=1)
    assert await q.ack(delivery, unlease=1, final=("gw", last))
    assert sent == [["EVALSHA"]]
    async for _entry_id, delta in q.replies("gw", after="0-0"):
        assert delta == last
        break
    assert (await q.redis.xpending(q.turns_key, GROUP))["pending"] == 0
    assert await q.redis.ttl(q.reply_prefix + "gw") > 0  # the stream expires, as publish's
    assert await q.lease(1, ttl_ms=60_000)  # released: free to take again
    await q.unlease(1)

    assert await q.submit(Turn(conversation_id=2, message_id=9, gateway="broken"))
    [delivery] = await q.receive(10, block_ms=500)
    assert await q.lease(2, ttl_ms=60_000)
    await q.redis.set(q.reply_prefix + "broken", "not a stream")
    refused = ReplyDelta("m9", 0, "Lost?", done=True, attempt=1)
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await q.ack(delivery, unlease=2, final=("broken", refused))
    assert (await q.redis.xpending(q.turns_key, GROUP))["pending"] == 1  # to be answered again
    assert await q.redis.get(q.lease_prefix + "2") == "w"  # still this worker's

    # with no lease to release, the delta goes first on its own, then the ack
    assert await q.submit(Turn(conversation_id=3, message_id=11, gateway="gw"))
    [delivery] = await q.receive(10, block_ms=500)
    alone = ReplyDelta("m11", 0, "Alone.", done=True, attempt=1)
    assert await q.ack(delivery, final=("gw", alone))
    entries = await q.redis.xrange(q.reply_prefix + "gw")
    assert len(entries) == 2 and '"Alone."' in entries[-1][1]["d"]
    assert (await q.redis.xpending(q.turns_key, GROUP))["pending"] == 1  # conversation 2's only
    await q.stop()
