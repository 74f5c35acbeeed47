"""Admission control: FRONTDESK_USER_RATE and FRONTDESK_MAX_BACKLOG, counted in Redis (scaled
mode) and in process (embedded): a refused user is told when to go on, other users are not
touched, and a refused message is stored but never answered."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from frontdesk import texts
from frontdesk.bots.admission import Admission
from frontdesk.engine.backends.fixed import FixedReplyBackend
from frontdesk.engine.queue import make_queue
from frontdesk.engine.worker import Worker
from frontdesk.errors import QueueUnavailable
from frontdesk.wire import InboundMessage
from tests.storage.test_logs_cli import as_json, invoke
from tests.support import Pipeline, pipeline


async def stored_user_messages(p: Pipeline) -> list[str]:
    said = []
    for conv in await p.store.list_conversations(limit=50):
        _c, messages = await p.store.conversation(conv.id)
        said += [m.content for m in messages if m.role == "user"]
    return sorted(said)


@pytest.mark.parametrize("scaled", [True, False], ids=["redis", "embedded"])
async def test_a_user_over_the_rate_is_told_when_to_go_on_and_others_are_not_touched(
    make_settings, redis_url: str, queue_prefix: str, scaled: bool
) -> None:
    redis = {"redis_url": redis_url, "queue_prefix": queue_prefix} if scaled else {}
    settings = make_settings(user_rate="3/min", **redis)
    async with pipeline(settings, FixedReplyBackend("Answered.")) as p:
        said = [await p.channel.say(f"question {n}", chat="alice") for n in range(5)]
        assert [r.text for r in said[:3] if r] == ["Answered."] * 3  # three at once
        refused = [r.text for r in said[3:] if r]
        assert len(refused) == 2 and all(t.startswith("You're sending messages") for t in refused)
        assert "in 20 seconds" in refused[0] or "in 19 seconds" in refused[0]  # 60 s / 3
        bob = await p.channel.say("hello", chat="bob")
        assert bob is not None and bob.text == "Answered."  # his own bucket
        # every message is stored; the refused ones are not answered (no turn, no sweep)
        assert await stored_user_messages(p) == sorted(
            ["hello", *(f"question {n}" for n in range(5))]
        )
        assert (
            await p.store.awaiting_replies(
                older_than=datetime.now(UTC) + timedelta(days=1), limit=10
            )
            == []
        )
        assert p.gateway.admission.refused == {"rate": 2, "busy": 0, "budget": 0}
        if scaled:  # `frontdesk queue status` shows what every gateway refused
            status = await p.queue.status()  # type: ignore[attr-defined]
            assert (status.refused_rate, status.refused_busy) == (2, 0)
        # and `frontdesk stats` per platform and window: refusals are neither turns nor errors
        url = p.store.url
        [row] = await asyncio.to_thread(as_json, url, "stats")
        assert row["refused"] == {"rate": 2} and row["turns"] == 4 and row["errors"] == 0
        table = await asyncio.to_thread(invoke, url, "stats")
        assert table.exit_code == 0 and "refused by admission control" in table.output


async def test_a_users_rate_refills_and_is_shared_by_every_gateway(
    make_settings, redis_url: str, queue_prefix: str
) -> None:
    """Two queues (two gateway processes) count the same user in one bucket, on Redis's
    clock; a token comes back after period/count."""
    queues = [make_queue(redis_url, consumer=f"g{n}", prefix=queue_prefix) for n in (1, 2)]
    for q in queues:
        await q.start()
    try:
        assert await queues[0].take("user:test:alice", 2, 1.0) == 0
        assert await queues[1].take("user:test:alice", 2, 1.0) == 0
        wait = await queues[0].take("user:test:alice", 2, 1.0)
        assert 0 < wait <= 0.5  # one token every half second
        assert await queues[1].take("user:test:bob", 2, 1.0) == 0
        await asyncio.sleep(wait + 0.05)
        assert await queues[1].take("user:test:alice", 2, 1.0) == 0
    finally:
        for q in queues:
            await q.stop()


async def test_past_the_backlog_new_messages_are_told_we_are_busy_and_nothing_accepted_drops(
    make_settings, redis_url: str, queue_prefix: str
) -> None:
    settings = make_settings(redis_url=redis_url, queue_prefix=queue_prefix, max_backlog=2)
    async with pipeline(settings, None) as p:  # no worker yet: turns wait
        first = [await p.gateway.handle(p.channel.message(f"q{n}", chat=f"c{n}"), p.channel)
                 for n in range(2)]  # fmt: skip
        await asyncio.sleep(0.6)  # the backlog is read at most every half second
        busy = await p.channel.say("one more", chat="c9")
        assert busy is not None and busy.text == texts.BUSY
        assert await p.queue.backlog() == 2  # the two accepted still wait
        worker = Worker(settings, p.queue, p.store, FixedReplyBackend("Answered."))
        await worker.start()
        try:
            await asyncio.wait_for(asyncio.gather(*(t for t in first if t)), 60)
            assert [r.text for r in p.channel.delivered[-2:]] == ["Answered."] * 2
        finally:
            await worker.stop()
        assert "one more" in await stored_user_messages(p)
        assert p.gateway.admission.refused["busy"] == 1


@pytest.mark.parametrize("scaled", [True, False], ids=["redis", "embedded"])
async def test_a_user_past_the_daily_token_budget_is_told_when_it_starts_again(
    make_settings, redis_url: str, queue_prefix: str, scaled: bool
) -> None:
    """The worker counts each turn's tokens (prompt and reply) against its user's UTC day; past
    the budget the gateway refuses, and the budget of another day (or user) is untouched."""
    redis = {"redis_url": redis_url, "queue_prefix": queue_prefix} if scaled else {}
    settings = make_settings(user_daily_tokens=30, **redis)
    async with pipeline(settings, FixedReplyBackend("Answered.")) as p:
        today = datetime.now(UTC).date()
        alice = f"test:user-{p.channel.chat}"  # the RecordingChannel's user of its own chat
        first = await p.channel.say("how do returns work?")
        assert first is not None and first.text == "Answered."
        spent = await p.queue.tokens_spent(alice, today)
        assert spent > 0  # the prompt and the reply
        while spent < 30:  # answered until the budget is spent
            reply = await p.channel.say("and then?")
            assert reply is not None and reply.text == "Answered."
            spent = await p.queue.tokens_spent(alice, today)
        refused = await p.channel.say("one more?")
        assert refused is not None
        assert refused.text.startswith("You've reached today's limit") and "midnight UTC" in (
            refused.text
        )
        assert await p.queue.tokens_spent(alice, today) == spent  # the refusal spent nothing
        bob = await p.channel.say("hi", chat="bob")
        assert bob is not None and bob.text == "Answered."
        assert p.gateway.admission.refused["budget"] == 1
        # the next UTC day: what was spent the day before does not count
        tomorrow = datetime.combine(today + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
        p.gateway.admission.clock = lambda: tomorrow + timedelta(seconds=1)
        again = await p.channel.say("good morning")
        assert again is not None and again.text == "Answered."


async def test_a_platforms_retry_of_an_admitted_message_is_not_counted_or_refused(
    make_settings, redis_url: str, queue_prefix: str
) -> None:
    settings = make_settings(user_rate="1/min", redis_url=redis_url, queue_prefix=queue_prefix)
    async with pipeline(settings, FixedReplyBackend("Answered.")) as p:
        first = await p.channel.say("where is my parcel?", message_id="m-1")
        assert first is not None and first.text == "Answered."
        assert await p.channel.say("where is my parcel?", message_id="m-1") is None  # answered
        assert p.gateway.admission.refused["rate"] == 0
        second = await p.channel.say("hello?", message_id="m-2")  # a new one: over the rate
        assert second is not None and second.text.startswith("You're sending messages")
        assert [r.text for r in p.channel.delivered] == ["Answered.", second.text]


class UnreachableRedis:
    """A queue whose Redis cannot be reached: every admission count fails."""

    async def backlog(self) -> int:
        raise QueueUnavailable("cannot read the backlog on Redis: connection refused")

    async def take(self, key: str, count: int, per_s: float) -> float:
        raise QueueUnavailable("cannot count a rate on Redis: connection refused")

    async def tokens_spent(self, user: str, day: object) -> int:
        raise QueueUnavailable("cannot read a token budget on Redis: connection refused")


async def test_when_redis_cannot_be_reached_a_message_is_let_through(make_settings) -> None:
    settings = make_settings(user_rate="1/min", max_backlog=1, user_daily_tokens=1)
    admission = Admission(settings, UnreachableRedis())  # type: ignore[arg-type]
    msg = InboundMessage(platform="test", chat_id="c", user_id="u", message_id="1", text="hi")
    assert admission.active and await admission.refusal(msg) is None
    assert admission.refused == {"rate": 0, "busy": 0, "budget": 0}
