"""How the Telegram channel shows a reply as it streams: "typing…" until the first text, then one
message edited with the growing text at most every edit interval (text that came within an
interval shows at its end, though no more comes), a final edit with the whole text, and text
beyond 4096 characters (UTF-16 units) continued in new messages."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from chatgpt_md_converter import telegram_format
from telegram import InlineKeyboardButton, InlineKeyboardMarkup
from telegram.constants import ChatAction, MessageLimit
from telegram.error import TelegramError

from frontdesk.storage import Rating

from ..channel import ReplyStream, ReplyText
from ..text import split_text, utf16_len
from .api import ChatRef

if TYPE_CHECKING:
    from .channel import TelegramChannel

log = logging.getLogger(__name__)

LIMIT = MessageLimit.MAX_TEXT_LENGTH  # 4096, counted after entity parsing
TYPING_EVERY_S = 4.0  # a chat action shows for 5 s
RATE_PREFIX = "rate"  # callback_data "rate:up:<message id>": 👍 on the answer to that message


def rating_buttons(question_id: int) -> InlineKeyboardMarkup:
    """👍 and 👎 under an answer, naming the message it answers (as its turn does)."""
    return InlineKeyboardMarkup([[
        InlineKeyboardButton("👍", callback_data=f"{RATE_PREFIX}:up:{question_id}"),
        InlineKeyboardButton("👎", callback_data=f"{RATE_PREFIX}:down:{question_id}"),
    ]])  # fmt: skip


def parse_rating(data: str) -> tuple[int, Rating] | None:
    """(message id, rating) from a rating button's callback_data; None for any other data."""
    prefix, _, rest = data.partition(":")
    rating, _, question = rest.partition(":")
    if prefix != RATE_PREFIX or rating not in ("up", "down") or not question.isdigit():
        return None
    return int(question), Rating(rating)


class LiveReply:
    """One reply shown as it streams: messages sent so far and the text each shows."""

    def __init__(self, channel: TelegramChannel, chat: ChatRef, interval: float) -> None:
        self.channel = channel
        self.chat = chat
        self.interval = interval
        # (message id, HTML it shows); None: unknown (posted by a process before a restart)
        self.shown: list[tuple[int, str | None]] = []
        self.reply: ReplyStream | None = None

    async def run(self, reply: ReplyStream) -> None:
        self.reply = reply
        # a resumed reply: the messages posted for it before are edited to the whole text
        self.shown = [(int(message_id), None) for message_id in reply.posted]
        typing = asyncio.create_task(self._typing())
        latest = ReplyText()
        reader = asyncio.create_task(latest.read(reply))
        last_show = 0.0
        try:
            while True:
                await latest.changed.wait()
                latest.changed.clear()
                if latest.last is not None:
                    break
                if reader.done():  # the stream ended without its last delta
                    reader.result()
                    return
                if not latest.text.strip():
                    continue
                typing.cancel()
                # at most one edit an interval; text that came within it shows at its end, even
                # when the engine goes quiet meanwhile
                wait = last_show + self.interval - time.monotonic()
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(latest.finished.wait(), wait)
                    if latest.last is not None:
                        break
                await self._show(latest.text)
                last_show = time.monotonic()
            text = latest.text
            if latest.joined:  # a later message's reply answers this one
                return
            typing.cancel()
            # an answer of the bot's (not a notice, not an apology) can be rated
            rated = not latest.error and reply.turn_id.startswith("m") and text.strip()
            buttons = rating_buttons(int(reply.turn_id[1:])) if rated else None
            await self._show(text, final=True, buttons=buttons)
        finally:
            typing.cancel()
            reader.cancel()

    async def _add_buttons(self, message_id: int, markup: InlineKeyboardMarkup) -> None:
        bot = self.channel._bot

        async def edit(**_text: Any) -> Any:
            return await bot.edit_message_reply_markup(
                chat_id=self.chat.id, message_id=message_id, reply_markup=markup
            )

        try:
            await self.channel._call(self.chat, edit, None, "")
        except TelegramError as exc:  # the answer stands without its buttons
            log.warning("could not add rating buttons to message %s: %s", message_id, exc)

    async def _drop_beyond(self, count: int) -> None:
        bot = self.channel._bot
        for message_id, _html in self.shown[count:]:

            async def delete(message_id: int = message_id, **_text: Any) -> Any:
                return await bot.delete_message(chat_id=self.chat.id, message_id=message_id)

            try:
                await self.channel._call(self.chat, delete, None, "")
            except TelegramError as exc:
                log.warning("could not delete message %s: %s", message_id, exc)
        del self.shown[count:]
        await self._note_posted()

    async def _note_posted(self) -> None:
        if self.reply is not None:
            await self.reply.note_posted([str(message_id) for message_id, _html in self.shown])

    async def _typing(self) -> None:
        bot = self.channel._bot
        while True:
            try:
                await bot.send_chat_action(
                    self.chat.id, ChatAction.TYPING, message_thread_id=self.chat.thread
                )
            except TelegramError as exc:
                log.debug("chat action failed: %s", exc)
            await asyncio.sleep(TYPING_EVERY_S)

    async def _show(
        self, text: str, *, final: bool = False, buttons: InlineKeyboardMarkup | None = None
    ) -> None:
        """Bring the chat up to ``text``: edit messages whose part changed, send new parts. At the
        end, messages beyond the text's parts go (a reply that started over came out shorter),
        and the last one gets ``buttons`` (in its last edit: no edit is spent on them alone
        unless its text was shown whole already)."""
        bot = self.channel._bot
        parts = split_text(text, LIMIT, utf16_len)
        if final and len(self.shown) > len(parts):
            await self._drop_beyond(len(parts))
        last = max((i for i, part in enumerate(parts) if part.strip()), default=-1)
        for index, part in enumerate(parts):
            if not part.strip():
                continue
            html = telegram_format(part)
            markup = buttons if index == last else None
            if index < len(self.shown):
                message_id, shown = self.shown[index]
                if html == shown:
                    if markup is not None:
                        await self._add_buttons(message_id, markup)
                    continue  # never an edit that changes nothing

                async def edit(
                    message_id: int = message_id, markup: Any = markup, **kw: Any
                ) -> Any:
                    return await bot.edit_message_text(
                        chat_id=self.chat.id, message_id=message_id, reply_markup=markup, **kw
                    )

                await self.channel._call(self.chat, edit, html, part)
                self.shown[index] = (message_id, html)
            else:

                async def send(markup: Any = markup, **kw: Any) -> Any:
                    return await bot.send_message(**self.chat.target, reply_markup=markup, **kw)

                sent = await self.channel._call(self.chat, send, html, part)
                self.shown.append((sent.message_id, html))
                await self._note_posted()
