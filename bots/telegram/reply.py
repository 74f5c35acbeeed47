"""How the Telegram channel shows a reply as it streams: "typing…" until the first text, then one
message edited with the growing text at most every edit interval, a final edit with the whole
text, and text beyond 4096 characters (UTF-16 units) continued in new messages."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from chatgpt_md_converter import telegram_format
from telegram.constants import ChatAction, MessageLimit
from telegram.error import TelegramError

from ..channel import ReplyStream
from ..text import split_text, utf16_len
from .api import ChatRef

if TYPE_CHECKING:
    from .channel import TelegramChannel

log = logging.getLogger(__name__)

LIMIT = MessageLimit.MAX_TEXT_LENGTH  # 4096, counted after entity parsing
TYPING_EVERY_S = 4.0  # a chat action shows for 5 s


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
        text = ""
        last_show = 0.0
        try:
            async for delta in reply:
                text = delta.text if delta.restart else text + delta.text
                if delta.done:
                    if delta.error:
                        text = f"{text.rstrip()}\n\n{delta.error}" if text.strip() else delta.error
                    typing.cancel()
                    await self._show(text, final=True)
                    return
                if text.strip():
                    typing.cancel()
                    if time.monotonic() - last_show >= self.interval:
                        await self._show(text)
                        last_show = time.monotonic()
        finally:
            typing.cancel()

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

    async def _show(self, text: str, *, final: bool = False) -> None:
        """Bring the chat up to ``text``: edit messages whose part changed, send new parts. At the
        end, messages beyond the text's parts go (a reply that started over came out shorter)."""
        bot = self.channel._bot
        parts = split_text(text, LIMIT, utf16_len)
        if final and len(self.shown) > len(parts):
            await self._drop_beyond(len(parts))
        for index, part in enumerate(parts):
            if not part.strip():
                continue
            html = telegram_format(part)
            if index < len(self.shown):
                message_id, shown = self.shown[index]
                if html == shown:
                    continue  # never an edit that changes nothing

                async def edit(message_id: int = message_id, **kw: Any) -> Any:
                    return await bot.edit_message_text(
                        chat_id=self.chat.id, message_id=message_id, **kw
                    )

                await self.channel._call(self.chat, edit, html, part)
                self.shown[index] = (message_id, html)
            else:

                async def send(**kw: Any) -> Any:
                    return await bot.send_message(**self.chat.target, **kw)

                sent = await self.channel._call(self.chat, send, html, part)
                self.shown.append((sent.message_id, html))
                await self._note_posted()
