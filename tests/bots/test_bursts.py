"""Bursts (FRONTDESK_BURST_MS): a user who splits one question over quick messages gets one
answer to all of them. Every message is stored; the turn of each waits until its message is the
burst old, and one whose author wrote again meanwhile joins the later turn, whose reply answers
the last message with all of them in its prompt. Through the real python-telegram-bot and
slack-bolt against the stand-ins, with one worker (embedded) and through Redis."""

from __future__ import annotations

import asyncio
import time

import pytest

from frontdesk.bots.slack import SlackChannel
from frontdesk.bots.telegram import TelegramChannel
from frontdesk.engine.backends.fixed import FixedReplyBackend
from frontdesk.settings import Settings
from tests.bots.test_slack import RecordingBackend
from tests.fakes.slack_api import FakeSlack
from tests.fakes.telegram_api import FakeTelegram
from tests.support import Pipeline, free_port, pipeline

ALICE, BOB, GROUP = 1001, 1002, -100200
SPLIT = ["hi", "my parcel never arrived", "order 1234, sent last week"]
ANSWER = "Sorry about that: I'll look up order 1234."


async def stored_texts(p: Pipeline) -> list[str]:
    texts = []
    for conv in await p.store.list_conversations(limit=50):
        _c, messages = await p.store.conversation(conv.id)
        texts += [m.content for m in messages]
    return texts


def scaled(on: bool, redis_url: str, queue_prefix: str) -> dict[str, str]:
    return {"redis_url": redis_url, "queue_prefix": queue_prefix} if on else {}


@pytest.mark.parametrize("through_redis", [False, True], ids=["embedded", "redis"])
async def test_three_telegram_messages_in_a_second_get_one_reply_to_all_of_them(
    make_settings, redis_url: str, queue_prefix: str, through_redis: bool
) -> None:
    backend = RecordingBackend(ANSWER)
    async with FakeTelegram() as telegram:
        settings: Settings = make_settings(
            telegram_token=telegram.token, telegram_api_url=telegram.base_url,
            burst_ms=1500, **scaled(through_redis, redis_url, queue_prefix),
        )  # fmt: skip
        async with pipeline(settings, backend, channels=[TelegramChannel(settings)]) as p:
            started = time.monotonic()
            for text in SPLIT:  # 0.4 s apart
                telegram.private_message(text)
                await asyncio.sleep(0.4)
            await telegram.wait_for(lambda f: f.messages_in(ALICE), timeout=30)
            await asyncio.sleep(2.0)  # a second reply would come by now
            answered_after = time.monotonic() - started
            stored = await stored_texts(p)
    assert [m["text"] for m in telegram.messages_in(ALICE)] == [ANSWER]
    assert stored == [*SPLIT, ANSWER]  # every message stored, one reply after the last
    prompt = backend.prompts[-1]  # (a prompt may be rendered more than once)
    assert [m.content for m in prompt if m.role == "user"] == SPLIT
    assert answered_after >= 0.8 + 1.5  # the last message's turn waited out the burst


async def test_a_message_after_the_burst_gets_its_own_reply_and_other_users_are_not_joined(
    make_settings,
) -> None:
    backend = FixedReplyBackend(ANSWER)
    async with FakeTelegram() as telegram:
        settings: Settings = make_settings(
            telegram_token=telegram.token, telegram_api_url=telegram.base_url, burst_ms=500
        )
        async with pipeline(settings, backend, channels=[TelegramChannel(settings)]) as p:
            telegram.private_message("first question")
            await telegram.wait_for(lambda f: len(f.messages_in(ALICE)) == 1, timeout=30)
            telegram.private_message("second question, later")
            # in a group, two people at once: each is answered
            telegram.group_message("mine?", mention_bot=True, user_id=BOB, username="bob")
            telegram.group_message("and mine?", mention_bot=True, user_id=1003, username="cy")
            await telegram.wait_for(
                lambda f: len(f.messages_in(ALICE)) == 2 and len(f.messages_in(GROUP)) == 2
                and p.gateway.pending == 0,
                timeout=30,
            )  # fmt: skip
            await asyncio.sleep(1.0)
    assert [m["text"] for m in telegram.messages_in(ALICE)] == [ANSWER, ANSWER]
    assert [m["text"] for m in telegram.messages_in(GROUP)] == [ANSWER, ANSWER]


async def test_three_slack_messages_in_a_second_get_one_reply_and_no_placeholder_is_left(
    make_settings, redis_url: str, queue_prefix: str
) -> None:
    backend = RecordingBackend(ANSWER)
    async with FakeSlack() as slack:
        port = free_port()
        settings: Settings = make_settings(
            slack_bot_token=slack.bot_token, slack_signing_secret=slack.signing_secret,
            slack_api_url=slack.base_url, http_port=port, burst_ms=1500,
            **scaled(True, redis_url, queue_prefix),
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}/slack/events"
        async with pipeline(settings, backend, channels=[SlackChannel(settings)]) as p:
            for text in SPLIT:
                status, _took = await slack.post_event(url, slack.dm(text))
                assert status == 200
                await asyncio.sleep(0.4)
            await slack.wait_for(lambda f: f.messages_in("D0ALICE"), timeout=30)
            await asyncio.sleep(2.0)
            stored = await stored_texts(p)
    assert [m["text"] for m in slack.messages_in("D0ALICE")] == [ANSWER]
    assert slack.calls_to("chat.delete") == []  # no placeholder was posted for the joined
    assert stored == [*SPLIT, ANSWER]
    prompt = backend.prompts[-1]  # (a prompt may be rendered more than once)
    assert [m.content for m in prompt if m.role == "user"] == SPLIT
