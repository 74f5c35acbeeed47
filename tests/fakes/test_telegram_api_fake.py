"""Checks FakeTelegram against the real python-telegram-bot client, so that tests built on the
fake fail for the reasons Telegram would fail them."""

from __future__ import annotations

import asyncio
import gc
import time
from collections import deque
from collections.abc import AsyncIterator

import aiohttp
import pytest
from telegram import Bot
from telegram.constants import ParseMode
from telegram.error import BadRequest, Conflict, RetryAfter

from tests.fakes.telegram_api import ApiError, FakeTelegram, parse_html

TOKEN = "123456:TEST"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(token=TOKEN) as server:
        yield server


@pytest.fixture
async def bot(fake: FakeTelegram) -> AsyncIterator[Bot]:
    client = Bot(TOKEN, base_url=fake.base_url)
    await client.initialize()
    yield client
    await client.shutdown()


async def test_get_me_describes_the_bot(bot: Bot, fake: FakeTelegram) -> None:
    me = await bot.get_me()
    assert (me.id, me.username, me.is_bot) == (fake.bot_id, "frontdesk_test_bot", True)


async def test_html_message_is_stored_as_visible_text(bot: Bot, fake: FakeTelegram) -> None:
    sent = await bot.send_message(7, "<b>Hi</b> &lt;there&gt;", parse_mode=ParseMode.HTML)
    assert sent.text == "Hi <there>"
    assert sent.entities[0].type == "bold"
    [stored] = fake.messages_in(7)
    assert (stored["message_id"], stored["text"]) == (sent.message_id, "Hi <there>")
    [call] = fake.calls_to("sendMessage", chat_id=7)
    assert call.params["chat_id"] == 7 and call.params["parse_mode"] == "HTML"


async def test_edit_with_same_content_is_not_modified() -> None:
    fake_free = FakeTelegram(token=TOKEN, rate_limits=False)
    async with fake_free:
        client = Bot(TOKEN, base_url=fake_free.base_url)
        await client.initialize()
        sent = await client.send_message(8, "one")
        await client.edit_message_text("two", chat_id=8, message_id=sent.message_id)
        with pytest.raises(BadRequest, match="not modified"):
            await client.edit_message_text("two", chat_id=8, message_id=sent.message_id)
        with pytest.raises(BadRequest, match="not found"):
            await client.edit_message_text("x", chat_id=8, message_id=99)
        await client.shutdown()
        assert fake_free.messages_in(8)[0]["texts"] == ["one", "two"]


async def test_too_long_counts_visible_utf16_units(bot: Bot) -> None:
    # Tags do not count, an emoji counts twice
    await bot.send_message(9, "<i>" + "a" * 4096 + "</i>", parse_mode=ParseMode.HTML)
    with pytest.raises(BadRequest, match=r"(?i)message is too long"):
        await bot.send_message(10, "😀" * 2049)


async def test_second_message_within_a_second_gets_429(bot: Bot, fake: FakeTelegram) -> None:
    await bot.send_message(11, "first")
    with pytest.raises(RetryAfter) as caught:
        await bot.send_message(11, "second")
    # The private timedelta avoids PTB's deprecation warning on the int `retry_after`
    assert caught.value._retry_after.total_seconds() == 1
    assert fake.count_429() == 1
    assert [c.status for c in fake.calls_to("sendMessage", 11)] == [200, 429]
    await bot.send_chat_action(11, "typing")  # not rate limited


async def test_fail_next_forces_a_429(bot: Bot, fake: FakeTelegram) -> None:
    fake.fail_next("editMessageText", retry_after=5)
    sent = await bot.send_message(12, "x")
    with pytest.raises(RetryAfter) as caught:
        await bot.edit_message_text("y", chat_id=12, message_id=sent.message_id)
    assert caught.value._retry_after.total_seconds() == 5


def test_group_limit_is_twenty_a_minute() -> None:
    fake = FakeTelegram()
    now = time.monotonic()
    fake._accepted_at[-5] = deque(now - 59 + i for i in range(20))
    with pytest.raises(ApiError, match="retry after 1"):
        fake._check_flood(-5)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("<b>unclosed", 'Can\'t find end tag corresponding to start tag "b"'),
        ("<foo>x</foo>", 'Unsupported start tag "foo"'),
        ("x</b>", "Unexpected end tag"),
        ("<b><i>x</b></i>", "Unmatched end tag"),
        ("a & b", "Unsupported HTML entity"),
        ("a < b", "Unclosed start tag"),
        ("<br/>", 'Unsupported start tag "br"'),
    ],
)
async def test_bad_html_is_refused(bot: Bot, text: str, reason: str) -> None:
    with pytest.raises(BadRequest, match=r"(?i)can't parse entities") as caught:
        await bot.send_message(13, text, parse_mode=ParseMode.HTML)
    assert reason.lower() in caught.value.message.lower()


def test_html_entities_and_nesting() -> None:
    text, entities = parse_html(
        '<b>a<a href="https://x.y">😀&amp;</a></b><pre><code class="language-py">z</code></pre>'
    )
    assert text == "a😀&z"
    assert [(e["type"], e["offset"], e["length"]) for e in entities] == [
        ("bold", 0, 4),
        ("text_link", 1, 3),
        ("pre", 4, 1),
    ]
    assert entities[2]["language"] == "py"


async def test_get_updates_offset_and_timeout(bot: Bot, fake: FakeTelegram) -> None:
    first = fake.private_message("hello")
    fake.group_message("/ask hi", mention_bot=True)
    updates = await bot.get_updates(offset=0, timeout=1)
    assert [u.update_id for u in updates] == [1, 2]
    assert updates[0].message.text == first["message"]["text"]
    assert updates[1].message.entities[1].type == "bot_command"
    started = time.monotonic()
    assert await bot.get_updates(offset=3, timeout=1) == ()
    assert 0.9 < time.monotonic() - started < 3
    assert [u.update_id for u in await bot.get_updates(offset=2, timeout=0)] == []


async def test_long_poll_wakes_on_injected_update(bot: Bot, fake: FakeTelegram) -> None:
    poll = asyncio.create_task(bot.get_updates(timeout=10))
    await asyncio.sleep(0.2)
    fake.private_command("start")
    updates = await asyncio.wait_for(poll, 2)
    assert updates[0].message.text == "/start"


async def test_a_second_get_updates_ends_the_waiting_one_with_409(
    bot: Bot, fake: FakeTelegram
) -> None:
    other = Bot(TOKEN, base_url=fake.base_url)  # a second process polling the same bot
    await other.initialize()
    try:
        first = asyncio.create_task(bot.get_updates(timeout=10))
        await asyncio.sleep(0.2)
        second = asyncio.create_task(other.get_updates(timeout=10))
        with pytest.raises(Conflict, match="terminated by other getUpdates request"):
            await asyncio.wait_for(first, 2)
        fake.private_message("hello")
        assert [u.update_id for u in await asyncio.wait_for(second, 2)] == [1]
    finally:
        await other.shutdown()
    assert fake.conflicts == 1


async def test_webhook_blocks_polling_and_posts(bot: Bot, fake: FakeTelegram) -> None:
    await bot.set_webhook(f"{fake.base_url[:-4]}/hook", secret_token="s3cret")
    assert fake.webhook is not None and fake.webhook.secret_token == "s3cret"
    with pytest.raises(Conflict):
        await bot.get_updates(timeout=0)
    assert await fake.post_webhook({"update_id": 1}, secret="s3cret") == 404
    await bot.delete_webhook()
    assert fake.webhook is None


async def test_unknown_method_and_wrong_token(fake: FakeTelegram) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{fake.base_url}{TOKEN}/getChatAdministrators") as response:
            assert response.status == 404
            assert (await response.json())["description"] == "Not Found: method not found"
        async with session.post(f"{fake.base_url}1:bad/getMe") as response:
            assert response.status == 401
    assert [c.status for c in fake.calls] == [404, 401]


async def test_a_stand_in_serves_without_collector_pauses_and_restores_the_collector() -> None:
    """A stand-in's clock must not stop while this process collects garbage (see FakeServer):
    the collector is off while one serves, nested ones too, and as it was once they stop."""
    assert gc.isenabled()
    async with FakeTelegram():
        assert not gc.isenabled()
        async with FakeTelegram():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


async def test_a_stand_in_that_cannot_start_leaves_the_collector_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def refuse(self: FakeTelegram) -> None:
        raise OSError("no port")

    monkeypatch.setattr(FakeTelegram, "start", refuse)
    with pytest.raises(OSError):
        async with FakeTelegram():
            pass
    assert gc.isenabled()
