"""Handoff to a person: a Telegram customer answered by agents at a Slack desk, through the real
python-telegram-bot and slack-bolt against both stand-ins, one gateway running both channels,
Redis and a worker."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from frontdesk import texts
from frontdesk.bots.slack import SlackChannel
from frontdesk.bots.slack.desk import CLAIM, RESOLVE, RESOLVE_THREAD
from frontdesk.bots.telegram import TelegramChannel
from frontdesk.engine.backends import Chunk, GenerationParams, Prompt
from frontdesk.engine.knowledge.ingest import add_paths
from frontdesk.storage import Rating
from frontdesk.wire import AGENT_SAID
from tests.bots.test_slack import DM as SLACK_DM
from tests.bots.test_slack import RecordingBackend
from tests.engine.test_knowledge import RETURNS, write
from tests.fakes.slack_api import FakeSlack
from tests.fakes.telegram_api import FakeTelegram
from tests.storage.test_logs_cli import as_json, invoke
from tests.support import Pipeline, free_port, pipeline, until

ALICE = 1001  # the Telegram customer
DESK = "C0DESK"
AGENT = "U0AGENT"


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


class Both:
    """The running gateway as both platforms see it."""

    def __init__(self, p: Pipeline, telegram: FakeTelegram, slack: FakeSlack, url: str) -> None:
        self.p, self.telegram, self.slack, self.url = p, telegram, slack, url

    async def customer_sees(self, count: int) -> list[str]:
        await self.telegram.wait_for(
            lambda f: len(f.messages_in(ALICE)) >= count and self.p.gateway.pending == 0
        )
        return [m["text"] for m in self.telegram.messages_in(ALICE)]

    async def desk_card(self) -> dict[str, Any]:
        """The handoff's card at the desk, as soon as it shows (the gateway stores its thread
        just after: an agent may answer before that)."""
        await self.slack.wait_for(lambda f: any(not m["thread_ts"] for m in f.messages_in(DESK)))
        [card] = [m for m in self.slack.messages_in(DESK) if not m["thread_ts"]]
        return card

    def thread(self, card: dict[str, Any]) -> list[str]:
        return [m["text"] for m in self.slack.messages_in(DESK) if m["thread_ts"] == card["ts"]]

    async def press(self, card: dict[str, Any], action_id: str) -> None:
        status = await self.slack.press_button(
            self.url, channel=DESK, message_ts=card["ts"], action_id=action_id, user=AGENT
        )
        assert status == 200

    async def agent_replies(self, card: dict[str, Any], text: str) -> None:
        envelope = self.slack.thread_reply(text, thread_ts=card["ts"], user=AGENT, channel=DESK)
        status, _took = await self.slack.post_event(self.url, envelope)
        assert status == 200


@contextlib.asynccontextmanager
async def running(  # type: ignore[no-untyped-def]
    make_settings, telegram: FakeTelegram, slack: FakeSlack, backend: RecordingBackend,
    redis_url: str, queue_prefix: str, **values: object,
) -> AsyncIterator[Both]:  # fmt: skip
    """One gateway running both channels, with the Slack desk unless ``values`` say else."""
    settings = make_settings(**{
        "telegram_token": telegram.token, "telegram_api_url": telegram.base_url,
        "telegram_edit_interval": 0.5, "slack_bot_token": slack.bot_token,
        "slack_signing_secret": slack.signing_secret, "slack_api_url": slack.base_url,
        "http_port": free_port(), "redis_url": redis_url, "queue_prefix": queue_prefix,
        "desk": f"slack:{DESK}", **values,
    })  # fmt: skip
    channels = [TelegramChannel(settings), SlackChannel(settings)]
    async with pipeline(settings, backend, channels=channels) as p:
        yield Both(p, telegram, slack, f"http://127.0.0.1:{p.gateway.http.port}/slack/events")


async def test_a_telegram_customer_is_answered_by_a_person_at_the_slack_desk_and_back(
    make_settings, telegram: FakeTelegram, slack: FakeSlack, redis_url: str, queue_prefix: str
) -> None:
    backend = RecordingBackend("The bot's answer.")
    async with running(make_settings, telegram, slack, backend, redis_url, queue_prefix) as both:
        telegram.private_message("my parcel never arrived, order 1234")
        assert await both.customer_sees(1) == ["The bot's answer."]
        telegram.private_command("human")
        assert (await both.customer_sees(2))[-1] == texts.HANDED_OVER

        card = await both.desk_card()  # one parent message: who, why, what was asked
        assert "Alice" in card["text"] and "telegram" in card["text"]
        shown = str(card["blocks"])
        assert "my parcel never arrived, order 1234" in shown and "conversations show" in shown
        await both.press(card, CLAIM)
        await slack.wait_for(lambda f: f"<@{AGENT}>" in str(both.slack.messages_in(DESK)[0]))

        await both.agent_replies(card, "Sorry about that! I've sent a new parcel today.")
        seen = await both.customer_sees(3)
        assert seen[-1] == "Support: Sorry about that! I've sent a new parcel today."
        await both.agent_replies(card, "note: customer is a regular, refund shipping")
        prompts = len(backend.prompts)
        telegram.private_message("thank you!")
        telegram.private_message("will it come by friday?")
        await slack.wait_for(lambda f: len(both.thread(card)) >= 2)
        assert both.thread(card) == ["Alice: thank you!", "Alice: will it come by friday?"]
        assert len(backend.prompts) == prompts  # the bot stayed silent: no turn reached it
        assert len(telegram.messages_in(ALICE)) == 3  # and the note never reached the customer

        await both.press(card, RESOLVE)
        assert (await both.customer_sees(4))[-1] == texts.BOT_IS_BACK
        await slack.wait_for(lambda f: "Resolved" in str(f.messages_in(DESK)[0]["blocks"]))
        assert CLAIM not in str(slack.messages_in(DESK)[0]["blocks"])  # no buttons left

        telegram.private_message("ok and how do i track it?")
        assert (await both.customer_sees(5))[-1] == "The bot's answer."
        asked = backend.prompts[-1]
        person = [m for m in asked if m.content.startswith(AGENT_SAID)]
        assert [(m.role, m.content) for m in person] == [
            ("assistant", f"{AGENT_SAID} Sorry about that! I've sent a new parcel today.")
        ]
        convs = await both.p.store.list_conversations(limit=50)
        [conv] = [c for c in convs if c.platform == "telegram"]
        _c, stored = await both.p.store.conversation(conv.id)
        agent = [m for m in stored if m.role == "agent"]
        assert [(m.user_id, m.content) for m in agent] == [
            (AGENT, "Sorry about that! I've sent a new parcel today.")
        ]
        assert await both.p.store.handoff_of(conv.id) is None  # the bot's again
        first_question = next(m.id for m in stored if m.role == "user")
        assert await both.p.store.rate(first_question, "telegram:1001", Rating.DOWN)

    # the admin CLI knows them: the agent's message in the transcript, the handoff in stats
    url = both.p.store.url
    shown = await asyncio.to_thread(invoke, url, "conversations", "show", str(conv.id))
    assert shown.exit_code == 0 and f"agent {AGENT}" in shown.output
    found = await asyncio.to_thread(as_json, url, "search", "new parcel")
    assert [(hit["role"], hit["user_id"]) for hit in found] == [("agent", AGENT)]  # type: ignore[union-attr]
    [row] = await asyncio.to_thread(as_json, url, "stats", "--platform", "telegram")
    assert row["handoffs"] == {"asked": 1} and row["handoffs_resolved"] == 1.0
    assert 0 <= row["first_human_p50_s"] < 60
    exported = await asyncio.to_thread(invoke, url, "feedback", "export")
    [rated] = [json.loads(line) for line in exported.stdout.splitlines()]
    assert (rated["question"], rated["rating"]) == ("my parcel never arrived, order 1234", "down")
    assert rated["agent_answer"] == "Sorry about that! I've sent a new parcel today."


async def test_an_agent_who_answers_before_the_gateway_stored_the_card_s_thread_still_reaches_the_customer(
    make_settings, telegram: FakeTelegram, slack: FakeSlack, redis_url: str, queue_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The card is posted first and its thread stored just after; here storing it waits until
    the agent has claimed and answered."""
    backend = RecordingBackend("The bot's answer.")
    async with running(make_settings, telegram, slack, backend, redis_url, queue_prefix) as both:
        store = both.p.gateway.desk.store if both.p.gateway.desk is not None else None
        assert store is not None
        storing, stored = store.set_desk_thread, asyncio.Event()

        async def later(handoff_id: int, thread: str) -> None:
            await stored.wait()
            await storing(handoff_id, thread)

        monkeypatch.setattr(store, "set_desk_thread", later)
        telegram.private_command("human")
        card = await both.desk_card()
        assert await store.handoff_by_thread(f"slack:{DESK}", card["ts"]) is None  # not yet
        pressed = asyncio.create_task(both.press(card, CLAIM))
        answered = asyncio.create_task(both.agent_replies(card, "Hello, I'm here to help."))
        await asyncio.sleep(0.3)  # both reached the gateway before the thread was stored
        stored.set()
        await asyncio.gather(pressed, answered)
        seen = await both.customer_sees(2)
        assert seen == [texts.HANDED_OVER, "Support: Hello, I'm here to help."]
        await slack.wait_for(lambda f: f"<@{AGENT}>" in str(f.messages_in(DESK)[0]))  # claimed


async def test_a_person_asked_for_in_words_and_a_desk_reply_after_resolve_is_refused(
    make_settings, telegram: FakeTelegram, slack: FakeSlack, redis_url: str, queue_prefix: str
) -> None:
    backend = RecordingBackend("The bot's answer.")
    async with running(make_settings, telegram, slack, backend, redis_url, queue_prefix) as both:
        telegram.private_message("can I talk to a human please")
        assert await both.customer_sees(1) == [texts.HANDED_OVER]
        telegram.private_command("human")  # asked again: still one handoff
        assert (await both.customer_sees(2))[-1] == texts.HANDOFF_ALREADY
        card = await both.desk_card()
        slack.add_user(AGENT, "dana", "Dana")
        await both.agent_replies(card, "Hi, Dana here.")  # writing takes it over
        assert (await both.customer_sees(3))[-1] == "Support: Hi, Dana here."  # not looked up yet
        await slack.wait_for(lambda f: f"<@{AGENT}>" in str(f.messages_in(DESK)[0]["blocks"]))
        desk_side = both.p.gateway.channel("slack")
        await until(lambda: desk_side._known_name(AGENT) == (True, "Dana"))  # type: ignore[union-attr]
        await both.agent_replies(card, "What size do you need?")
        assert (await both.customer_sees(4))[-1] == "Dana: What size do you need?"
        telegram.private_command("bot")  # the customer goes back to the bot
        assert (await both.customer_sees(5))[-1] == texts.BOT_IS_BACK
        await both.agent_replies(card, "are you still there?")
        await slack.wait_for(lambda f: texts.HANDOFF_OVER in both.thread(card))
        assert len(telegram.messages_in(ALICE)) == 5  # nothing more reached the customer
        assert backend.prompts == []  # no turn reached the engine throughout


async def test_several_desk_channels_share_the_handoffs_and_each_thread_reaches_its_customer(
    make_settings, telegram: FakeTelegram, slack: FakeSlack, redis_url: str, queue_prefix: str
) -> None:
    """FRONTDESK_DESK with two Slack channels: two customers' handoffs go one to each (a
    channel takes one post a second), and what agents do in each reaches the right customer."""
    backend = RecordingBackend("The bot's answer.")
    other_desk, bob = "C0DESK2", 1002
    async with running(make_settings, telegram, slack, backend, redis_url, queue_prefix,
                       desk=f"slack:{DESK}, slack:{other_desk}") as both:  # fmt: skip
        telegram.private_command("human")
        assert await both.customer_sees(1) == [texts.HANDED_OVER]
        telegram.private_command("human", user_id=bob, username="bob", first_name="Bob")
        await telegram.wait_for(lambda f: f.messages_in(bob) and both.p.gateway.pending == 0)

        def card_in(channel: str) -> dict[str, Any]:
            [card] = [m for m in slack.messages_in(channel) if not m["thread_ts"]]
            return card

        await slack.wait_for(lambda f: all(len(f.messages_in(c)) == 1 for c in (DESK, other_desk)))
        cards = {
            card_in(c)["text"].split(": ", 1)[1].split(" on ")[0]: c for c in (DESK, other_desk)
        }
        assert sorted(cards) == ["Alice", "Bob"]  # one handoff in each channel
        for name, customer in (("Alice", ALICE), ("Bob", bob)):
            channel = cards[name]
            reply = slack.thread_reply(f"Hello {name}", thread_ts=card_in(channel)["ts"],
                                       user=AGENT, channel=channel)  # fmt: skip
            assert (await slack.post_event(both.url, reply))[0] == 200
            await telegram.wait_for(lambda f, c=customer: len(f.messages_in(c)) == 2)
            assert telegram.messages_in(customer)[-1]["text"] == f"Support: Hello {name}"

        # Resolve in Bob's channel ends Bob's handoff only: Alice still has a person
        bob_channel = cards["Bob"]
        status = await slack.press_button(both.url, channel=bob_channel,
                                          message_ts=card_in(bob_channel)["ts"],
                                          action_id=RESOLVE, user=AGENT)  # fmt: skip
        assert status == 200
        await telegram.wait_for(lambda f: len(f.messages_in(bob)) == 3)
        assert telegram.messages_in(bob)[-1]["text"] == texts.BOT_IS_BACK
        telegram.private_message("are you there?")
        await slack.wait_for(
            lambda f: "Alice: are you there?" in str(f.messages_in(cards["Alice"]))
        )
        assert len(telegram.messages_in(ALICE)) == 2  # no bot answer: still a person's
        assert backend.prompts == []


async def test_a_desk_channel_taken_out_of_the_list_relays_nothing_any_more(
    make_settings, telegram: FakeTelegram, slack: FakeSlack, redis_url: str, queue_prefix: str
) -> None:
    """What the README says of a place removed from FRONTDESK_DESK: its threads relay nothing
    (resolve its handoffs first)."""
    backend = RecordingBackend("The bot's answer.")
    gone = "C0DESKOLD"
    async with running(make_settings, telegram, slack, backend, redis_url, queue_prefix,
                       desk=f"slack:{gone}") as both:  # fmt: skip
        telegram.private_command("human")
        assert await both.customer_sees(1) == [texts.HANDED_OVER]
        await slack.wait_for(lambda f: len(f.messages_in(gone)) == 1)
        [card] = slack.messages_in(gone)
    async with running(make_settings, telegram, slack, backend, redis_url, queue_prefix) as both:
        reply = slack.thread_reply("Hello from the old desk", thread_ts=card["ts"], user=AGENT,
                                   channel=gone)  # fmt: skip
        assert (await slack.post_event(both.url, reply))[0] == 200  # acked
        await asyncio.sleep(1.5)  # a relayed reply would reach the customer by now
        assert [m["text"] for m in telegram.messages_in(ALICE)] == [texts.HANDED_OVER]


async def test_a_customer_a_person_has_is_not_refused_by_the_user_rate(
    make_settings, telegram: FakeTelegram, slack: FakeSlack, redis_url: str, queue_prefix: str
) -> None:
    """Admission limits guard the engine: a customer talking to a person is never told to slow
    down, and every message reaches the desk's thread."""
    backend = RecordingBackend("The bot's answer.")
    async with running(make_settings, telegram, slack, backend, redis_url, queue_prefix,
                       user_rate="1/min") as both:  # fmt: skip
        telegram.private_command("human")
        assert await both.customer_sees(1) == [texts.HANDED_OVER]
        card = await both.desk_card()
        for text in ("first", "second", "third"):
            telegram.private_message(text)
        await slack.wait_for(lambda f: len(both.thread(card)) == 3)
        assert both.thread(card) == ["Alice: first", "Alice: second", "Alice: third"]
        assert [m["text"] for m in telegram.messages_in(ALICE)] == [texts.HANDED_OVER]
        assert both.p.gateway.admission.refused["rate"] == 0


async def test_a_handoff_outlives_a_gateway_restart(
    make_settings, telegram: FakeTelegram, slack: FakeSlack, redis_url: str, queue_prefix: str
) -> None:
    """The state is in SQL: after a restart the customer's message still goes to the desk
    (no bot answer), and the agent's reply still reaches the customer."""
    backend = RecordingBackend("The bot's answer.")
    async with running(make_settings, telegram, slack, backend, redis_url, queue_prefix) as both:
        telegram.private_command("human")
        assert await both.customer_sees(1) == [texts.HANDED_OVER]
        card = await both.desk_card()
    async with running(make_settings, telegram, slack, backend, redis_url, queue_prefix) as both:
        telegram.private_message("still there?")
        await slack.wait_for(lambda f: both.thread(card) == ["Alice: still there?"])
        await both.agent_replies(card, "Yes, looking into it now.")
        assert (await both.customer_sees(2))[-1] == "Support: Yes, looking into it now."
    assert backend.prompts == []  # the engine never answered


async def test_a_question_the_help_centre_does_not_cover_offers_a_person(
    make_settings, telegram: FakeTelegram, slack: FakeSlack, redis_url: str, queue_prefix: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    backend = RecordingBackend("an improvised answer")
    async with running(make_settings, telegram, slack, backend, redis_url, queue_prefix) as both:
        write(tmp_path / "help", "returns.md", RETURNS)
        await add_paths(both.p.store, [tmp_path / "help"])
        telegram.private_message("Can I pay with bitcoin?")
        [said] = await both.customer_sees(1)
        assert said == f"{texts.NOT_COVERED} {texts.OFFER_PERSON}"
        telegram.private_message("human")  # as the offer says
        assert (await both.customer_sees(2))[-1] == texts.HANDED_OVER
        card = await both.desk_card()
        assert "Can I pay with bitcoin?" in str(card["blocks"])
    assert backend.prompts == []


DESK_GROUP = -1009000  # the agents' Telegram supergroup, with topics
DANA = 2001


async def test_a_slack_customer_is_answered_by_a_person_in_a_telegram_desk_topic(
    make_settings, telegram: FakeTelegram, slack: FakeSlack, redis_url: str, queue_prefix: str
) -> None:
    telegram.forum(DESK_GROUP)
    backend = RecordingBackend("The bot's answer.")
    settings = make_settings(
        telegram_token=telegram.token, telegram_api_url=telegram.base_url,
        telegram_edit_interval=0.5, slack_bot_token=slack.bot_token,
        slack_signing_secret=slack.signing_secret, slack_api_url=slack.base_url,
        http_port=free_port(), redis_url=redis_url, queue_prefix=queue_prefix,
        desk=f"telegram:{DESK_GROUP}",
    )  # fmt: skip
    channels = [TelegramChannel(settings), SlackChannel(settings)]
    async with pipeline(settings, backend, channels=channels) as p:
        url = f"http://127.0.0.1:{p.gateway.http.port}/slack/events"

        async def customer(text: str) -> None:
            status, _took = await slack.post_event(url, slack.dm(text))
            assert status == 200

        async def customer_sees(count: int) -> list[str]:
            await slack.wait_for(
                lambda f: len(f.messages_in(SLACK_DM)) >= count and p.gateway.pending == 0
            )
            return [m["text"] for m in slack.messages_in(SLACK_DM)]

        def agent(text: str) -> None:
            telegram.group_message(
                text, chat_id=DESK_GROUP, user_id=DANA, username="dana", first_name="Dana",
                message_thread_id=topic, is_topic_message=True,
            )  # fmt: skip

        await customer("my boots came in the wrong size")
        assert await customer_sees(1) == ["The bot's answer."]
        await customer("human")
        assert (await customer_sees(2))[-1] == texts.HANDED_OVER
        await telegram.wait_for(lambda f: bool(f.topics[DESK_GROUP]))
        [(topic, name)] = telegram.topics[DESK_GROUP].items()
        assert "slack" in name
        await telegram.wait_for(lambda f: bool(f.topic_messages(DESK_GROUP, topic)))
        [card] = telegram.topic_messages(DESK_GROUP, topic)
        assert "my boots came in the wrong size" in card and "conversations show" in card

        agent("Hi, Dana here: I'll send the next size up today.")
        assert (await customer_sees(3))[
            -1
        ] == "Dana: Hi, Dana here: I'll send the next size up today."
        agent("note: check stock first")
        await customer("great, thanks!")
        await telegram.wait_for(
            lambda f: f.topic_messages(DESK_GROUP, topic)[-1].endswith(": great, thanks!")
        )
        assert len(slack.messages_in(SLACK_DM)) == 3  # no bot answer, and the note stayed
        agent("/resolve")
        assert (await customer_sees(4))[-1] == texts.BOT_IS_BACK
        await telegram.wait_for(lambda f: "Resolved" in f.topic_messages(DESK_GROUP, topic)[-1])
        agent("one more thing")  # too late: the agent is told, the customer gets nothing
        await telegram.wait_for(
            lambda f: f.topic_messages(DESK_GROUP, topic)[-1] == texts.HANDOFF_OVER
        )
        assert len(slack.messages_in(SLACK_DM)) == 4
    assert len(backend.prompts) == 1  # only the first question reached the engine


async def test_a_handoff_nobody_claims_in_time_goes_back_to_the_bot(
    make_settings, telegram: FakeTelegram, slack: FakeSlack, redis_url: str, queue_prefix: str
) -> None:
    backend = RecordingBackend("The bot's answer.")
    async with running(
        make_settings, telegram, slack, backend, redis_url, queue_prefix, desk_claim_timeout_s=1.0
    ) as both:
        telegram.private_command("human")
        assert await both.customer_sees(1) == [texts.HANDED_OVER]
        assert (await both.customer_sees(2))[-1] == texts.NOBODY_CLAIMED  # within a few seconds
        card = await both.desk_card()
        await slack.wait_for(lambda f: "Resolved" in str(f.messages_in(DESK)[0]["blocks"]))
        telegram.private_message("so where is my parcel?")  # the bot answers again
        assert (await both.customer_sees(3))[-1] == "The bot's answer."
        await both.agent_replies(card, "sorry, I'm here now")  # too late for this handoff
        await slack.wait_for(lambda f: texts.HANDOFF_OVER in both.thread(card))
        assert len(telegram.messages_in(ALICE)) == 3


async def test_a_handoff_left_idle_goes_back_to_the_bot(
    make_settings, telegram: FakeTelegram, slack: FakeSlack, redis_url: str, queue_prefix: str
) -> None:
    backend = RecordingBackend("The bot's answer.")
    async with running(
        make_settings, telegram, slack, backend, redis_url, queue_prefix, handoff_idle_s=2.0
    ) as both:
        telegram.private_command("human")
        card = await both.desk_card()
        await both.agent_replies(card, "Hello, how can I help?")
        assert (await both.customer_sees(2))[-1] == "Support: Hello, how can I help?"
        # then nobody writes: after the idle time the bot has the conversation again
        assert (await both.customer_sees(3))[-1] == texts.BOT_IS_BACK
        assert backend.prompts == []


async def test_a_desk_that_cannot_be_posted_to_tells_the_customer_nobody_is_available(
    make_settings, telegram: FakeTelegram, slack: FakeSlack, redis_url: str, queue_prefix: str
) -> None:
    slack.missing_channels.add(DESK)  # the desk channel was deleted, or mistyped
    backend = RecordingBackend("The bot's answer.")
    async with running(make_settings, telegram, slack, backend, redis_url, queue_prefix) as both:
        telegram.private_command("human")
        assert await both.customer_sees(1) == [texts.NOBODY_AVAILABLE]
        telegram.private_message("ok, where is my parcel then?")  # still the bot's
        assert (await both.customer_sees(2))[-1] == "The bot's answer."


class Breaks(RecordingBackend):
    """Starts each answer (shown: the engine pauses), then fails: the customer gets an apology
    every time."""

    async def stream(self, prompt: Prompt, params: GenerationParams) -> AsyncIterator[Chunk]:
        yield Chunk("Let me check ")
        await asyncio.sleep(0.05)
        raise RuntimeError("the engine broke")


async def test_after_failed_answers_in_a_row_the_next_message_goes_to_a_person(
    make_settings, telegram: FakeTelegram, slack: FakeSlack, redis_url: str, queue_prefix: str
) -> None:
    async with running(
        make_settings,
        telegram,
        slack,
        Breaks(""),
        redis_url,
        queue_prefix,
        handoff_after_failures=2,
    ) as both:
        for n in (1, 2):
            telegram.private_message(f"where is order {n}?")
            assert texts.ENGINE_FAILED in (await both.customer_sees(n))[-1]
        telegram.private_message("this is useless, where is my order?")
        assert (await both.customer_sees(3))[-1] == texts.HANDED_OVER
        card = await both.desk_card()
        assert "(failures)" in card["text"]


async def test_outside_desk_hours_the_customer_is_told_when_and_the_claim_clock_waits(
    make_settings, telegram: FakeTelegram, slack: FakeSlack, redis_url: str, queue_prefix: str
) -> None:
    from datetime import UTC, datetime

    from frontdesk.bots.hours import DAYS

    closed_day = DAYS[(datetime.now(UTC).weekday() + 2) % 7].title()  # not today, not tomorrow
    hours = f"{closed_day} 09:00-17:00"
    async with running(
        make_settings,
        telegram,
        slack,
        RecordingBackend("x"),
        redis_url,
        queue_prefix,
        desk_hours=hours,
        desk_claim_timeout_s=0.5,
    ) as both:
        telegram.private_command("human")
        [said] = await both.customer_sees(1)
        assert said == texts.handed_over_after_hours(f"{hours} (UTC)")
        card = await both.desk_card()
        await asyncio.sleep(2.0)  # four claim timeouts: none counts while the desk is closed
        assert len(telegram.messages_in(ALICE)) == 1
        await both.agent_replies(card, "Morning! Sorry for the wait.")
        assert (await both.customer_sees(2))[-1] == "Support: Morning! Sorry for the wait."


async def test_a_person_who_replies_in_a_customers_slack_thread_takes_it_over_until_resolve(
    make_settings, slack: FakeSlack, redis_url: str, queue_prefix: str
) -> None:
    """No desk needed: the bot stays quiet in the thread while a person answers there."""
    support = "C0SUPPORT"
    backend = RecordingBackend("The bot's answer.")
    settings = make_settings(
        slack_bot_token=slack.bot_token, slack_signing_secret=slack.signing_secret,
        slack_api_url=slack.base_url, http_port=free_port(), redis_url=redis_url,
        queue_prefix=queue_prefix,
    )  # fmt: skip
    async with pipeline(settings, backend, channels=[SlackChannel(settings)]) as p:
        url = f"http://127.0.0.1:{p.gateway.http.port}/slack/events"

        async def post(envelope: dict[str, Any]) -> None:
            status, _took = await slack.post_event(url, envelope)
            assert status == 200

        async def bot_posts(count: int) -> list[dict[str, Any]]:
            await slack.wait_for(
                lambda f: len(f.messages_in(support)) >= count and p.gateway.pending == 0
            )
            return slack.messages_in(support)

        mention = slack.mention("where is my order 77?", channel=support)
        root = mention["event"]["ts"]
        await post(mention)
        assert [m["text"] for m in await bot_posts(1)] == ["The bot's answer."]

        await post(slack.thread_reply("I'll take this one: it ships today.", thread_ts=root,
                                      user=AGENT, channel=support))  # fmt: skip
        notice = (await bot_posts(2))[-1]
        assert notice["text"] == texts.TAKEN_OVER and notice["thread_ts"] == root
        asked = len(backend.prompts)
        await post(slack.thread_reply("great, thank you!", thread_ts=root, channel=support))
        await post(slack.thread_reply("I'll keep an eye on it", thread_ts=root, user=AGENT,
                                      channel=support))  # fmt: skip
        await asyncio.sleep(1.0)  # time enough for an answer, which must not come
        assert len(slack.messages_in(support)) == 2 and len(backend.prompts) == asked

        status = await slack.press_button(
            url, channel=support, message_ts=notice["ts"], action_id=RESOLVE_THREAD, user=AGENT
        )
        assert status == 200
        posts = await bot_posts(3)
        assert posts[-1]["text"] == texts.BOT_IS_BACK
        assert posts[1]["text"] == texts.TAKEOVER_RESOLVED  # the notice lost its button
        await post(slack.thread_reply("one more: can I change the address?", thread_ts=root,
                                      channel=support))  # fmt: skip
        assert (await bot_posts(4))[-1]["text"] == "The bot's answer."
        person = [m.content for m in backend.prompts[-1] if m.content.startswith(AGENT_SAID)]
        assert person == [
            f"{AGENT_SAID} I'll take this one: it ships today.",
            f"{AGENT_SAID} I'll keep an eye on it",
        ]


async def test_a_reset_ends_the_handoff_with_the_conversation(
    make_settings, telegram: FakeTelegram, slack: FakeSlack, redis_url: str, queue_prefix: str
) -> None:
    backend = RecordingBackend("The bot's answer.")
    async with running(make_settings, telegram, slack, backend, redis_url, queue_prefix) as both:
        telegram.private_command("human")
        assert await both.customer_sees(1) == [texts.HANDED_OVER]
        card = await both.desk_card()
        telegram.private_command("reset")
        assert (await both.customer_sees(2))[-1] == texts.RESET
        await slack.wait_for(lambda f: "Resolved" in str(f.messages_in(DESK)[0]["blocks"]))
        await both.agent_replies(card, "hello?")  # too late: nothing reaches the customer
        await slack.wait_for(lambda f: texts.HANDOFF_OVER in both.thread(card))
        telegram.private_message("new question")
        assert (await both.customer_sees(3))[-1] == "The bot's answer."
