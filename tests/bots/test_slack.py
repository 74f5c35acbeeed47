"""The Slack channel end to end: slack-bolt and slack_sdk against the Web API stand-in, driven
by event posts signed as Slack signs them, through the gateway, Redis, the worker and
PostgreSQL. The real model answers where the reply's content does not matter to the assertion;
a fixed reply where it does."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from frontdesk import texts
from frontdesk.bots.slack import SlackChannel
from frontdesk.bots.slack.mrkdwn import to_mrkdwn
from frontdesk.bots.slack.reply import LIMIT, PLACEHOLDER
from frontdesk.engine.backends import Backend, Prompt
from frontdesk.engine.backends.fixed import FixedReplyBackend
from frontdesk.engine.backends.llamacpp import LlamaCppBackend
from frontdesk.engine.queue import RedisQueue
from frontdesk.engine.worker import Worker
from frontdesk.errors import ConfigError
from frontdesk.wire import ChatMessage
from tests.fakes.slack_api import FakeSlack
from tests.support import DiesMidway, Pipeline, SlowBackend, free_port, pipeline, until

DM = "D0ALICE"
SUPPORT = "C0SUPPORT"


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


@pytest.fixture
def slack_settings(make_settings, fake: FakeSlack, redis_url: str, queue_prefix: str):  # type: ignore[no-untyped-def]
    def build(**values: object):  # type: ignore[no-untyped-def]
        values = {
            "slack_bot_token": fake.bot_token,
            "slack_signing_secret": fake.signing_secret,
            "slack_api_url": fake.base_url,
            "http_port": free_port(),
            "redis_url": redis_url,
            "queue_prefix": queue_prefix,
            "max_new_tokens": 48,
            "temperature": 0.0,
            **values,
        }
        return make_settings(**values)

    return build


class Slack:
    """The running pipeline as Slack sees it: where to post events, and what came back."""

    def __init__(self, fake: FakeSlack, p: Pipeline, channel: SlackChannel, url: str) -> None:
        self.fake, self.p, self.channel, self.url = fake, p, channel, url

    async def send(self, envelope: dict[str, Any], **kwargs: Any) -> int:
        status, _took = await self.fake.post_event(self.url, envelope, **kwargs)
        return status

    async def settled(self, where: str, count: int = 1) -> list[dict[str, Any]]:
        """Wait until ``count`` bot messages are in ``where`` and no reply is still streaming."""
        await self.fake.wait_for(
            lambda f: len(f.messages_in(where)) >= count and self.p.gateway.pending == 0
        )
        return self.fake.messages_in(where)

    async def stored(self, where: str, thread_ts: str | None = None) -> list[tuple[str, str]]:
        """(role, content) of the stored messages of a DM, or of one thread in a channel."""
        key = f"{self.fake.team_id}:{where}" + (f":{thread_ts}" if thread_ts else "")
        convs = await self.p.store.list_conversations(limit=500)
        found = [c for c in convs if c.platform == "slack" and c.external_key == key]
        assert found, f"no conversation {key}"
        _c, messages = await self.p.store.conversation(found[0].id)
        return [(m.role, m.content) for m in messages]


@contextlib.asynccontextmanager
async def running(fake: FakeSlack, settings, backend: Backend) -> AsyncIterator[Slack]:  # type: ignore[no-untyped-def]
    channel = SlackChannel(settings)
    async with pipeline(settings, backend, channels=[channel]) as p:
        url = f"http://127.0.0.1:{p.gateway.http.port}/slack/events"
        yield Slack(fake, p, channel, url)


class RecordingBackend(FixedReplyBackend):
    """A fixed reply that remembers every prompt it rendered (the context builder may render a
    turn's prompt more than once; the last one is the prompt the turn used)."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.prompts: list[list[ChatMessage]] = []

    def render(self, messages: Sequence[ChatMessage]) -> Prompt:
        self.prompts.append(list(messages))
        return super().render(messages)


async def test_a_dm_and_a_mention_are_each_answered_once_in_their_thread(
    fake: FakeSlack, slack_settings, llama: LlamaCppBackend, pg_database: str
) -> None:
    # Conversation keys (team:channel) repeat across tests, so only this test uses the session's
    # shared PostgreSQL database; the others get a SQLite file of their own.
    async with running(fake, slack_settings(database_url=pg_database), llama) as slack:
        dm = fake.dm("What is the capital of France?")
        mention = fake.mention("Say hello to the team.")
        assert await slack.send(dm) == 200
        assert await slack.send(mention) == 200
        [dm_reply] = await slack.settled(DM)
        [channel_reply] = await slack.settled(SUPPORT)
        stored = await slack.stored(DM)
        mention_ts = mention["event"]["ts"]
        stored_thread = await slack.stored(SUPPORT, mention_ts)
    assert dm_reply["thread_ts"] == dm["event"]["ts"]  # in the thread of the message
    assert channel_reply["thread_ts"] == mention_ts
    for reply, messages in ((dm_reply, stored), (channel_reply, stored_thread)):
        assert reply["text"] and reply["text"] != PLACEHOLDER
        assert reply["text"] == to_mrkdwn(messages[-1][1])  # what was stored is what is shown
        assert [role for role, _ in messages] == ["user", "assistant"]
    assert stored_thread[0][1] == "Say hello to the team."  # the mention is taken out
    assert len(fake.calls_to("chat.postMessage", DM)) == 1  # one reply, posted once
    assert fake.count_429() == 0


async def test_a_reply_cut_off_by_a_dead_engine_is_replaced_by_the_new_answer(
    fake: FakeSlack, slack_settings
) -> None:
    """The first worker's reply ran to two messages before its engine died. The second worker's
    short answer takes the first message's place, and the second message goes."""
    settings = slack_settings(queue_claim_idle_ms=1500)
    cut_off = "The first half of a long story. " * 160  # 5,120 characters: two messages
    async with running(fake, settings, DiesMidway(cut_off)) as slack:
        assert await slack.send(fake.dm("Tell me everything.")) == 200
        assert slack.p.worker is not None and slack.p.worker.dead is not None
        await asyncio.wait_for(asyncio.shield(slack.p.worker.dead), 10)  # it died mid-reply
        await fake.wait_for(lambda f: len(f.messages_in(DM)) == 2)  # the reply is showing
        second = Worker(
            settings, slack.p.queue, slack.p.store, FixedReplyBackend("The whole answer.")
        )
        await second.start()
        try:
            await fake.wait_for(
                lambda f: (
                    slack.p.gateway.pending == 0
                    and f.messages_in(DM)[0]["text"] == "The whole answer."
                )
            )
        finally:
            await second.stop()
        stored = await slack.stored(DM)
    [reply] = fake.messages_in(DM)  # the first message, updated; the second deleted
    assert reply["texts"][0].startswith("The first half")
    assert len(fake.calls_to("chat.postMessage", DM)) == 2
    assert len(fake.calls_to("chat.delete", DM)) == 1
    assert stored == [("user", "Tell me everything."), ("assistant", "The whole answer.")]


async def test_the_ack_returns_within_3_seconds_while_the_engine_is_slow(
    fake: FakeSlack, slack_settings
) -> None:
    backend = SlowBackend("Sorry for the wait.", delay_s=5.0)
    async with running(fake, slack_settings(), backend) as slack:
        started = time.monotonic()
        status, took = await fake.post_event(slack.url, fake.dm("are you there?"))
        assert status == 200
        assert took < 3.0
        [reply] = await slack.settled(DM)
    assert reply["text"] == "Sorry for the wait."
    assert reply["texts"][0] == PLACEHOLDER  # the user saw the bot at work meanwhile
    assert time.monotonic() - started >= 5.0  # the reply was generated after the ack


async def test_a_retried_event_gets_no_second_reply_even_after_a_restart(
    fake: FakeSlack, slack_settings
) -> None:
    settings = slack_settings()
    event = fake.dm("hello")
    async with running(fake, settings, FixedReplyBackend("Only once.")) as slack:
        assert await slack.send(event) == 200
        await slack.settled(DM)
        assert await slack.send(event, retry_num=1) == 200  # Slack thought it timed out
        assert await slack.send(fake.dm("marker one")) == 200
        await slack.settled(DM, count=2)
    async with running(fake, settings, FixedReplyBackend("Only once.")) as slack:
        assert await slack.send(event, retry_num=2, retry_reason="http_error") == 200
        assert await slack.send(fake.dm("marker two")) == 200
        await slack.settled(DM, count=3)
        stored = await slack.stored(DM)
    assert len(fake.messages_in(DM)) == 3  # hello and the two markers
    assert [text for role, text in stored if role == "user"] == [
        "hello",
        "marker one",
        "marker two",
    ]


async def test_a_bad_signature_or_a_stale_timestamp_gets_401(
    fake: FakeSlack, slack_settings
) -> None:
    async with running(fake, slack_settings(), FixedReplyBackend("no")) as slack:
        assert await fake.url_verification(slack.url) == (200, True)
        event = fake.dm("let me in")
        assert await slack.send(event, signature="v0=" + "0" * 64) == 401
        assert await slack.send(event, timestamp=int(time.time()) - 301) == 401
        # unsigned, or signed with another app's secret
        async with (
            aiohttp.ClientSession() as session,
            session.post(slack.url, json=event) as response,
        ):
            assert response.status == 401
        other = FakeSlack(signing_secret="someone-else")
        body = json.dumps(event).encode()
        async with aiohttp.ClientSession() as session:
            headers = {"Content-Type": "application/json", **other.sign(body)}
            async with session.post(slack.url, data=body, headers=headers) as response:
                assert response.status == 401
        await asyncio.sleep(0.5)
        assert slack.p.gateway.pending == 0
    assert fake.messages_in(DM) == []  # nothing was taken, nothing answered


async def test_bots_edits_and_deletions_get_no_reply(fake: FakeSlack, slack_settings) -> None:
    async with running(fake, slack_settings(), FixedReplyBackend("Hi!")) as slack:
        mention = fake.mention("first question")
        await slack.send(mention)
        await slack.settled(SUPPORT)
        thread = mention["event"]["ts"]
        await slack.send(fake.bot_message("I am another bot", own=False))
        await slack.send(fake.bot_message("I am frontdesk itself", own=True))
        # the bot's own reply, arriving as a message event in the thread it is in
        own = fake.bot_message("a reply of mine", own=True)
        own["event"]["thread_ts"] = thread
        await slack.send(own)
        await slack.send(fake.message_changed("first question, edited"))
        await slack.send(fake.message_deleted())
        await slack.send(fake.dm("marker"))  # events are handled before their ack
        await slack.settled(DM)
    assert len(fake.messages_in(SUPPORT)) == 1
    assert [m["text"] for m in fake.messages_in(DM)] == ["Hi!"]


async def test_a_long_reply_is_split_within_slacks_limits(fake: FakeSlack, slack_settings) -> None:
    paragraph = " ".join(f"Sentence number {i} of the answer, with **bold**." for i in range(25))
    reply = "\n\n".join(f"{n}. {paragraph}" for n in range(12))
    assert len(reply) > 3 * LIMIT
    settings = slack_settings(max_new_tokens=5000, context_tokens=8192)
    async with running(fake, settings, FixedReplyBackend(reply)) as slack:
        await slack.send(fake.dm("Tell me everything"))
        messages = await slack.settled(DM, count=4)
    assert len(messages) >= 4
    assert all(len(text) <= LIMIT for m in messages for text in m["texts"])
    assert not any(m["over_4000"] for m in messages)
    assert all(m["thread_ts"] == messages[0]["thread_ts"] for m in messages)
    words = " ".join(m["text"] for m in messages).split()
    assert words == to_mrkdwn(reply).split()  # the whole text, in order, nothing lost
    assert [c for c in fake.calls if c.status != 200] == []  # no 429, no invalid_blocks


async def test_a_429_is_waited_out_and_no_reply_is_lost(fake: FakeSlack, slack_settings) -> None:
    fake.fail_next("chat.postMessage", retry_after=2)
    async with running(fake, slack_settings(), FixedReplyBackend("Patience pays.")) as slack:
        await slack.send(fake.dm("hi"))
        [message] = await slack.settled(DM)
    assert message["text"] == "Patience pays."
    posts = fake.calls_to("chat.postMessage", DM)
    assert [c.status for c in posts] == [429, 200]
    assert posts[1].at - posts[0].at >= 2.0  # Retry-After was honoured
    assert slack.channel.retries_after_429 == 1


async def test_a_thread_follow_up_continues_the_same_conversation(
    fake: FakeSlack, slack_settings
) -> None:
    backend = RecordingBackend("Noted.")
    async with running(fake, slack_settings(), backend) as slack:
        mention = fake.mention("My order 1234 has not arrived.")
        thread = mention["event"]["ts"]
        await slack.send(mention)
        await slack.settled(SUPPORT)
        # no mention: the bot is in this thread, so it answers
        await slack.send(fake.thread_reply("It was due on Monday.", thread_ts=thread))
        await slack.settled(SUPPORT, count=2)
        # a thread the bot is not in, and a top-level message: not addressed to it
        never_sent = fake.mention("a thread among people")
        await slack.send(fake.thread_reply("talking", thread_ts=never_sent["event"]["ts"]))
        top_level = fake.thread_reply("among ourselves", thread_ts=thread)
        del top_level["event"]["thread_ts"], top_level["event"]["parent_user_id"]
        await slack.send(top_level)
        await slack.send(fake.thread_reply("  ", thread_ts=thread))  # empty: told so
        await slack.settled(SUPPORT, count=3)
        stored = await slack.stored(SUPPORT, thread)
    follow_up_prompt = [m.content for m in backend.prompts[-1]]  # the prompt the turn used
    assert "My order 1234 has not arrived." in follow_up_prompt
    assert "Noted." in follow_up_prompt
    assert follow_up_prompt[-1] == "It was due on Monday."
    assert [m["thread_ts"] for m in fake.messages_in(SUPPORT)] == [thread] * 3
    assert fake.messages_in(SUPPORT)[-1]["text"] == texts.EMPTY_MESSAGE
    assert [text for role, text in stored if role == "user"] == [
        "My order 1234 has not arrived.",
        "It was due on Monday.",
    ]


async def test_a_reply_streams_into_a_placeholder_within_the_update_limits(
    fake: FakeSlack, slack_settings
) -> None:
    words = " ".join(f"word{i}" for i in range(60))
    backend = SlowBackend(f"**Streaming** {words}", gap_s=0.05)  # about 3 s of tokens
    settings = slack_settings(max_new_tokens=200, stream_flush_ms=20)
    async with running(fake, settings, backend) as slack:
        started = time.monotonic()
        await slack.send(fake.dm("stream please"))
        [message] = await slack.settled(DM)
        took = time.monotonic() - started
        queue = slack.p.queue
        assert isinstance(queue, RedisQueue)
        deltas = await queue.redis.xrange(queue.reply_prefix + slack.p.gateway.id)
    # the worker sent the reply's deltas no faster than Slack shows them (an update a second),
    # not every FRONTDESK_STREAM_FLUSH_MS for the gateway to merge
    assert 3 <= len(deltas) <= 2 + took / 1.0
    # the first words came at once, so they were posted instead of a placeholder (how many of
    # them is timing: the words come 50 ms apart); then the message grew by updates
    assert message["texts"][0].startswith("*Streaming*")
    assert len(message["texts"]) >= 3
    assert message["text"] == f"*Streaming* {words}"  # Markdown bold became mrkdwn bold
    updates = [c.at for c in fake.calls_to("chat.update", DM)]
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(updates))
    assert fake.count_429() == 0


async def test_a_reply_that_ends_just_after_its_post_gets_its_final_update_at_once(
    fake: FakeSlack, slack_settings
) -> None:
    words = " ".join(f"word{i}" for i in range(10))
    backend = SlowBackend(words, gap_s=0.04)  # done about 0.4 s after the first word
    async with running(fake, slack_settings(), backend) as slack:
        await slack.send(fake.dm("quick please"))
        [message] = await slack.settled(DM)
    assert message["text"] == words
    [post] = fake.calls_to("chat.postMessage", DM)
    [update] = fake.calls_to("chat.update", DM)
    # the one-a-second pacing of a message's updates is not counted from its post: the final
    # text comes when the last word does, not a second after the first
    assert update.at - post.at < 0.8
    assert fake.count_429() == 0


async def test_markdown_becomes_mrkdwn(fake: FakeSlack, slack_settings) -> None:
    reply = (
        "**Bold**, *italic*, `code` and [the docs](https://example.com/a?b=1&c=2).\n\n"
        "- first\n- second\n\n1. one\n2. two\n\n```\nx = 1 < 2\n```"
    )
    async with running(fake, slack_settings(), FixedReplyBackend(reply)) as slack:
        await slack.send(fake.dm("format"))
        [message] = await slack.settled(DM)
    text = message["text"]
    assert "*Bold*" in text and "**" not in text
    assert "_italic_" in text
    assert "`code`" in text
    assert "<https://example.com/a?b=1&c=2|the docs>" in text
    assert "•   first\n•   second" in text
    assert "1.  one\n2.  two" in text
    assert "```\nx = 1 < 2\n```" in text


async def test_display_names_are_stored_and_looked_up_once(fake: FakeSlack, slack_settings) -> None:
    fake.add_user("U0BOB", "bob", "Bobby B")
    async with running(fake, slack_settings(), FixedReplyBackend("ok")) as slack:
        await slack.send(fake.dm("one", user="U0BOB", channel="D0BOB"))
        await slack.settled("D0BOB")
        await slack.send(fake.dm("two", user="U0BOB", channel="D0BOB"))
        await slack.settled("D0BOB", count=2)
        # the name is looked up after the ack, and filled in where the message was stored
        for _ in range(50):
            convs = await slack.p.store.list_conversations(limit=500)
            [conv] = [c for c in convs if c.external_key == f"{fake.team_id}:D0BOB"]
            if conv.user_name is not None:
                break
            await asyncio.sleep(0.1)
        _c, messages = await slack.p.store.conversation(conv.id)
    assert conv.user_name == "Bobby B"
    assert {m.user_name for m in messages if m.role == "user"} == {"Bobby B"}
    assert fake.user_lookups["U0BOB"] == 1


async def test_reset_in_a_dm_and_the_slash_command_start_new_conversations(
    fake: FakeSlack, slack_settings
) -> None:
    async with running(fake, slack_settings(), FixedReplyBackend("ok")) as slack:
        await slack.send(fake.dm("first conversation"))
        await slack.settled(DM)
        await slack.send(fake.dm("Reset"))
        await slack.settled(DM, count=2)
        await slack.send(fake.dm("second conversation"))
        await slack.settled(DM, count=3)
        assert await slash_command(fake, slack.url, "reset", DM) == texts.RESET
        assert "each thread" in await slash_command(fake, slack.url, "reset", SUPPORT)
        assert "reset" in await slash_command(fake, slack.url, "help", DM)
        await slack.send(fake.dm("third conversation"))
        await slack.settled(DM, count=4)
        convs = await slack.p.store.list_conversations(limit=500)
    mine = [c for c in convs if c.external_key == f"{fake.team_id}:{DM}"]
    assert len(mine) == 3
    assert [m["text"] for m in fake.messages_in(DM)] == ["ok", texts.RESET, "ok", "ok"]


async def slash_command(fake: FakeSlack, url: str, text: str, channel: str) -> str:
    """Post ``/frontdesk <text>`` as Slack does (a signed form); returns the private answer."""
    body = urlencode(
        {
            "command": "/frontdesk",
            "text": text,
            "team_id": fake.team_id,
            "channel_id": channel,
            "user_id": "U0ALICE",
            "trigger_id": "1.2.3",
            "response_url": "http://127.0.0.1:1/unused",
            "api_app_id": "A0TEST",
        }
    ).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded", **fake.sign(body)}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers) as response,
    ):
        assert response.status == 200
        if response.content_type == "application/json":
            return (await response.json())["text"]
        return await response.text()  # bolt answers a plain string as text/plain


async def test_allowlists_refuse_politely_once(fake: FakeSlack, slack_settings) -> None:
    settings = slack_settings(slack_allowed_channels=[SUPPORT], slack_allowed_users=["U0ALICE"])
    fake.add_user("U0MALLORY", "mallory")
    async with running(fake, settings, FixedReplyBackend("Welcome.")) as slack:
        await slack.send(fake.mention("hi from elsewhere", channel="C0RANDOM"))
        await slack.send(fake.mention("again", channel="C0RANDOM"))
        await slack.send(fake.dm("let me in", user="U0MALLORY", channel="D0MALLORY"))
        await slack.send(fake.dm("please", user="U0MALLORY", channel="D0MALLORY"))
        await slack.send(fake.mention("hi from support"))
        await slack.send(fake.dm("hi from my DM"))
        await slack.settled(SUPPORT)
        await slack.settled(DM)
        convs = await slack.p.store.list_conversations(limit=500)
    assert [m["text"] for m in fake.messages_in("C0RANDOM")] == [texts.NOT_ALLOWED]
    assert [m["text"] for m in fake.messages_in("D0MALLORY")] == [texts.NOT_ALLOWED]
    assert [m["text"] for m in fake.messages_in(SUPPORT)] == ["Welcome."]
    keys = {c.external_key for c in convs}
    assert f"{fake.team_id}:D0MALLORY" not in keys  # nothing was stored for the refused


async def test_frontdesk_gateway_serves_slack_events_when_a_token_is_set(
    fake: FakeSlack, redis_url: str, queue_prefix: str, tmp_path
) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FRONTDESK_")},
        "FRONTDESK_SLACK_BOT_TOKEN": fake.bot_token,
        "FRONTDESK_SLACK_SIGNING_SECRET": fake.signing_secret,
        "FRONTDESK_SLACK_API_URL": fake.base_url,
        "FRONTDESK_HTTP_PORT": str(port),
        "FRONTDESK_REDIS_URL": redis_url,
        "FRONTDESK_QUEUE_PREFIX": queue_prefix,
        "FRONTDESK_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}",
        "FRONTDESK_ENGINE": "fixed",
        "FRONTDESK_FIXED_REPLY": "From separate processes.",
    }
    cli = [sys.executable, "-m", "frontdesk.cli"]
    upgrade = await asyncio.create_subprocess_exec(*cli, "db", "upgrade", env=env)
    assert await upgrade.wait() == 0
    procs = [
        await asyncio.create_subprocess_exec(*cli, role, env=env, stderr=asyncio.subprocess.PIPE)
        for role in ("gateway", "worker")
    ]
    url = f"http://127.0.0.1:{port}/slack/events"
    try:
        for _ in range(100):  # until the gateway listens
            with contextlib.suppress(aiohttp.ClientError):
                if (await fake.post_event(url, fake.dm("hello")))[0] == 200:
                    break
            await asyncio.sleep(0.2)
        await fake.wait_for(lambda f: bool(f.messages_in(DM)), timeout=60)
        assert fake.messages_in(DM)[0]["text"] == "From separate processes."
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [await asyncio.wait_for(proc.wait(), 30) for proc in procs]
    assert codes == [0, 0]
    for proc in procs:
        assert proc.stderr is not None
        assert b"Traceback" not in await proc.stderr.read()


async def test_bad_setup_is_one_clear_line(fake: FakeSlack, slack_settings) -> None:
    channel = SlackChannel(slack_settings(slack_bot_token="xoxb-wrong"))
    with pytest.raises(ConfigError, match="refused FRONTDESK_SLACK_BOT_TOKEN: invalid_auth"):
        async with pipeline(slack_settings(), None, channels=[channel]):
            pass
    with pytest.raises(ConfigError, match="neither FRONTDESK_SLACK_SIGNING_SECRET"):
        SlackChannel.from_settings(slack_settings(slack_signing_secret=None))
    assert SlackChannel.from_settings(slack_settings(slack_bot_token=None)) is None
    channel = SlackChannel(slack_settings(slack_app_token="xapp-wrong"))
    with pytest.raises(ConfigError, match="refused FRONTDESK_SLACK_APP_TOKEN: invalid_auth"):
        async with pipeline(slack_settings(), None, channels=[channel]):
            pass


async def test_socket_mode_answers_events_acked_over_the_socket(
    fake: FakeSlack, slack_settings
) -> None:
    settings = slack_settings(slack_app_token=fake.app_token, slack_signing_secret=None)
    async with running(fake, settings, FixedReplyBackend("Over the socket.")) as slack:
        assert not slack.p.gateway.http.needed  # no HTTP endpoint in Socket Mode
        await fake.wait_socket_connected()
        event = fake.mention("hello over the socket")
        took = await fake.send_socket_event(event)
        assert took < 3.0
        [reply] = await slack.settled(SUPPORT)
        # bolt copies retry_attempt into X-Slack-Retry-Num; the retry gets no second reply
        await fake.send_socket_event(event, retry_attempt=1, retry_reason="timeout")
        await fake.send_socket_event(fake.dm("marker"))
        await slack.settled(DM)
    assert reply["text"] == "Over the socket."
    assert reply["thread_ts"] == event["event"]["ts"]
    assert len(fake.messages_in(SUPPORT)) == 1
    assert fake.count_acks() == 3


async def test_a_reply_from_the_knowledge_base_links_its_source(
    fake: FakeSlack, slack_settings, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from frontdesk.engine.knowledge.ingest import add_paths

    (tmp_path / "help").mkdir()
    (tmp_path / "help" / "returns.md").write_text(
        "---\nurl: https://help.example.com/returns\n---\n# Returning an item\n\n"
        "Send shoes back within 30 days for a refund.\n"
    )
    async with running(fake, slack_settings(), FixedReplyBackend("Within 30 days.")) as slack:
        await add_paths(slack.p.store, [tmp_path / "help"])
        await slack.send(fake.dm("how do I return my shoes"))
        [message] = await slack.settled(DM)
    assert message["text"] == (
        f"Within 30 days.\n\n{texts.SOURCES}: <https://help.example.com/returns|Returning an item>"
    )


# -- what Slack sends that frontdesk does not answer -------------------------------------------
# Every signed event and interaction is acked with 200 (Slack sends a non-2xx again, and turns an
# app's events off when more than 5% of its deliveries fail within an hour), and a revoked token
# or an uninstall stops the Slack channel.

BOT_USER = "U0BOT"  # the stand-in's bot user

# events a workspace sends to an app subscribed to more than messages
UNHANDLED_EVENTS: list[dict[str, Any]] = [
    {"type": "reaction_added", "user": "U0ALICE", "reaction": "thumbsup",
     "item": {"type": "message", "channel": DM, "ts": "1.000001"}, "event_ts": "2.000001"},
    {"type": "member_joined_channel", "user": "U0BOB", "channel": "C0GENERAL",
     "channel_type": "C", "team": "T0TEST", "event_ts": "2.000002"},
    {"type": "app_home_opened", "user": "U0ALICE", "channel": DM, "tab": "home",
     "event_ts": "2.000003"},
    {"type": "channel_created", "channel": {"id": "C0NEW", "name": "new", "created": 1},
     "event_ts": "2.000004"},
    {"type": "user_change", "user": {"id": "U0ALICE", "name": "alice"}, "event_ts": "2.000005"},
]  # fmt: skip


def legacy_attachment_action() -> dict[str, Any]:
    """A button of a legacy message attachment, pressed (``interactive_message``)."""
    return {
        "type": "interactive_message", "callback_id": "old_survey",
        "actions": [{"name": "answer", "type": "button", "value": "yes"}],
        "team": {"id": "T0TEST", "domain": "test"}, "channel": {"id": DM, "name": "dm"},
        "user": {"id": "U0ALICE", "name": "alice"}, "action_ts": f"{time.time():.6f}",
        "message_ts": "1.000001", "attachment_id": "1", "token": "test-verification-token",
        "response_url": "http://127.0.0.1:9/none", "trigger_id": "1.2.3",
    }  # fmt: skip


async def test_every_signed_event_and_interaction_is_acked_and_the_next_message_answered(
    fake: FakeSlack, slack_settings, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(fake, slack_settings(), FixedReplyBackend("Hi!")) as slack:
        with caplog.at_level(logging.WARNING):
            for event in UNHANDLED_EVENTS:
                assert await slack.send(fake.event(event)) == 200, event["type"]
            shortcut = {"type": "shortcut", "callback_id": "open_ticket", "trigger_id": "1.2.3",
                        "user": {"id": "U0ALICE"}, "team": {"id": "T0TEST"}}  # fmt: skip
            # a button press without the action id that Slack always sends (bolt failed on it)
            no_action_id = {"type": "block_actions", "user": {"id": "U0ALICE"},
                            "team": {"id": "T0TEST"}, "actions": [{}]}  # fmt: skip
            for payload in (legacy_attachment_action(), shortcut, no_action_id):
                assert await fake.post_interaction(slack.url, payload) == 200, payload["type"]
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert fake.messages_in(DM) == []  # none of them is answered
        # a bad signature is still refused, whatever the kind
        bad = await fake.post_interaction(slack.url, legacy_attachment_action(), signature="v0=0")
        assert bad == 401
        assert await slack.send(fake.event(UNHANDLED_EVENTS[0]), signature="v0=00") == 401
        assert await slack.send(fake.dm("still there?")) == 200
        assert [m["text"] for m in await slack.settled(DM)] == ["Hi!"]


@pytest.mark.parametrize(
    "gone",
    [
        {"type": "tokens_revoked", "tokens": {"oauth": ["U0ADMIN"], "bot": [BOT_USER]}},
        {"type": "app_uninstalled"},
    ],
    ids=["tokens_revoked", "app_uninstalled"],
)
async def test_a_revoked_token_or_an_uninstall_stops_the_slack_channel(
    fake: FakeSlack, slack_settings, caplog: pytest.LogCaptureFixture, gone: dict[str, Any]
) -> None:
    async with running(fake, slack_settings(), FixedReplyBackend("Hi!")) as slack:
        assert slack.channel.bot_user_id == BOT_USER
        # another user's tokens revoked: the bot's own still stands
        others = {"type": "tokens_revoked", "tokens": {"oauth": ["U0ADMIN"], "bot": []}}
        assert await slack.send(fake.event(others)) == 200
        assert await slack.send(fake.dm("first")) == 200
        assert [m["text"] for m in await slack.settled(DM)] == ["Hi!"]

        with caplog.at_level(logging.WARNING):
            assert await slack.send(fake.event(gone)) == 200
        [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert gone["type"] in warning.getMessage() and "stops" in warning.getMessage()
        assert fake.bot_token not in caplog.text

        calls = len(fake.calls)
        assert await slack.send(fake.dm("second")) == 200  # acked, and dropped
        await asyncio.sleep(1.0)  # time for a reply, were one coming
        assert [m["text"] for m in fake.messages_in(DM)] == ["Hi!"]
        posted = [c.method for c in fake.calls[calls:] if c.method.startswith("chat.")]
        assert posted == []  # nothing more was posted to Slack


async def test_an_uninstall_over_socket_mode_closes_the_socket_for_good(
    fake: FakeSlack, slack_settings
) -> None:
    settings = slack_settings(slack_app_token=fake.app_token, slack_signing_secret=None)
    async with running(fake, settings, FixedReplyBackend("Hi!")) as slack:
        await fake.wait_socket_connected()
        await fake.send_socket_event(fake.event({"type": "app_uninstalled"}))
        await until(lambda: not fake.socket_connected, within=10)  # after the ack
        await asyncio.sleep(2.0)  # a client that reconnects would be back by now
        assert not fake.socket_connected
        assert slack.channel.revoked
    assert fake.count_acks() == 1  # the event was acked before the socket closed
