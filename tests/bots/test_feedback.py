"""Ratings of answers: 👍 and 👎 under each answer (on Telegram an inline keyboard on its last
message, on Slack Block Kit buttons with its final text), every press answered, one rating per
user and answer, and the evaluation set that `frontdesk feedback export` makes of them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from frontdesk import texts
from frontdesk.bots.slack import SlackChannel
from frontdesk.bots.slack.reply import RATE_DOWN, RATE_UP
from frontdesk.bots.telegram import TelegramChannel
from frontdesk.engine.backends.fixed import FixedReplyBackend
from tests.bots.test_slack import DM
from tests.fakes.slack_api import FakeSlack
from tests.fakes.telegram_api import FakeTelegram
from tests.storage.test_logs_cli import as_json, invoke
from tests.support import SlowBackend, free_port, pipeline

ALICE = 1001


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


async def test_a_thumbs_down_is_stored_once_against_its_answer_changed_and_exported(
    fake: FakeTelegram, make_settings, redis_url: str, queue_prefix: str
) -> None:
    settings = make_settings(
        telegram_token=fake.token, telegram_api_url=fake.base_url, telegram_edit_interval=0.5,
        redis_url=redis_url, queue_prefix=queue_prefix,
    )  # fmt: skip
    channel = TelegramChannel(settings)
    async with pipeline(
        settings, FixedReplyBackend("Parcels take two days."), channels=[channel]
    ) as p:

        async def answered(count: int) -> list[dict]:
            await fake.wait_for(
                lambda f: len(f.messages_in(ALICE)) >= count and p.gateway.pending == 0
            )
            return fake.messages_in(ALICE)

        fake.private_message("how long does shipping take?")
        [first] = await answered(1)
        fake.private_message("and to belgium? mail me at jo@example.com")
        second = (await answered(2))[-1]
        fake.private_command("help")  # a notice of the bot's own: nothing to rate
        help_message = (await answered(3))[-1]
        assert fake.buttons_of(ALICE, help_message["message_id"]) == []
        buttons = fake.buttons_of(ALICE, second["message_id"])
        assert [b["text"] for b in buttons] == ["👍", "👎"]
        down = next(b["callback_data"] for b in buttons if b["text"] == "👎")
        up = next(b["callback_data"] for b in buttons if b["text"] == "👍")

        presses = [fake.press(ALICE, second["message_id"], down) for _ in range(2)]  # a retry
        await fake.wait_for(lambda f: all(f.answers()[q] for q in presses))
        presses.append(fake.press(ALICE, first["message_id"], next(
            b["callback_data"] for b in fake.buttons_of(ALICE, first["message_id"])
            if b["text"] == "👍"
        )))  # fmt: skip
        await fake.wait_for(lambda f: all(f.answers()[q] for q in presses))
        url = p.store.url
        rows = await asyncio.to_thread(as_json, url, "feedback", "list")
        assert [(r["question"], r["rating"]) for r in rows] == [  # type: ignore[index]
            ("how long does shipping take?", "up"),
            ("and to belgium? mail me at jo@example.com", "down"),
        ]  # fmt: skip
        presses.append(fake.press(ALICE, second["message_id"], up))  # a change of mind
        await fake.wait_for(lambda f: all(f.answers()[q] for q in presses))
        assert {a["text"] for a in fake.answers().values()} == {texts.RATED}  # type: ignore[index]

        exported = await asyncio.to_thread(invoke, url, "feedback", "export")
        lines = [json.loads(line) for line in exported.stdout.splitlines()]
        assert len(lines) == 2 and {line["rating"] for line in lines} == {"up"}
        [belgium] = [line for line in lines if line["question"].startswith("and to belgium?")]
        assert belgium["answer"] == "Parcels take two days."
        assert [m["content"] for m in belgium["history"]] == [
            "how long does shipping take?", "Parcels take two days.",
        ]  # fmt: skip

        masked = await asyncio.to_thread(invoke, url, "feedback", "export", "--redact")
        assert "jo@example.com" not in masked.stdout and "and to belgium?" in masked.stdout

        # the answer purged, its buttons still on screen: a polite toast, nothing stored
        [conv] = [c for c in await p.store.list_conversations(limit=50) if c.platform == "telegram"]
        deleted = await asyncio.to_thread(
            invoke, url, "conversations", "delete", str(conv.id), "--yes"
        )
        assert deleted.exit_code == 0, deleted.output
        gone = fake.press(ALICE, second["message_id"], down)
        await fake.wait_for(lambda f: f.answers()[gone] is not None)
        assert fake.answers()[gone]["text"] == texts.RATING_GONE  # type: ignore[index]


async def test_slack_answers_get_rating_buttons_with_their_final_text_only(
    make_settings, redis_url: str, queue_prefix: str
) -> None:
    """The buttons come with the final text: no interim update carries them (none is spent on
    them while the answer streams). A press is said back to its user alone, through the
    response_url; pressed twice it counts once, and the other button replaces it."""
    async with FakeSlack() as slack:
        settings = make_settings(
            slack_bot_token=slack.bot_token, slack_signing_secret=slack.signing_secret,
            slack_api_url=slack.base_url, http_port=free_port(), redis_url=redis_url,
            queue_prefix=queue_prefix,
        )  # fmt: skip
        backend = SlowBackend("Parcels take two days to Belgium, three to France.", gap_s=0.3)
        async with pipeline(settings, backend, channels=[SlackChannel(settings)]) as p:
            url = f"http://127.0.0.1:{p.gateway.http.port}/slack/events"
            status, _took = await slack.post_event(url, slack.dm("how long is shipping?"))
            assert status == 200
            await slack.wait_for(lambda f: len(f.messages_in(DM)) == 1 and p.gateway.pending == 0)
            [answer] = slack.messages_in(DM)
            updates = slack.calls_to("chat.update", DM)
            assert len(updates) >= 2  # it streamed
            assert all(not c.params.get("blocks") for c in updates[:-1])
            actions = [b for b in answer["blocks"] if b["type"] == "actions"]
            assert [e["text"]["text"] for e in actions[0]["elements"]] == ["👍", "👎"]
            shown = " ".join(b["text"]["text"] for b in answer["blocks"] if b["type"] == "section")
            assert shown == answer["text"]  # the blocks show the whole text

            async def press(action_id: str) -> None:
                status = await slack.press_button(
                    url, channel=DM, message_ts=answer["ts"], action_id=action_id, user="U0ALICE"
                )
                assert status == 200

            await press(RATE_DOWN)
            await press(RATE_DOWN)  # again: still one rating
            await slack.wait_for(lambda f: len(f.responses) == 2)
            rows = await asyncio.to_thread(as_json, p.store.url, "feedback", "list")
            assert [(r["question"], r["rating"]) for r in rows] == [  # type: ignore[index]
                ("how long is shipping?", "down")
            ]
            await press(RATE_UP)
            await slack.wait_for(lambda f: len(f.responses) == 3)
            rows = await asyncio.to_thread(as_json, p.store.url, "feedback", "list")
            assert [r["rating"] for r in rows] == ["up"]  # type: ignore[index]
            assert {(r["text"], r["response_type"]) for r in slack.responses} == {
                (texts.RATED, "ephemeral")
            }
