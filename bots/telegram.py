"""The Telegram channel: python-telegram-bot (v22) inside the gateway's event loop.

Updates arrive by long polling, or by webhook on the gateway's HTTP server when
``FRONTDESK_TELEGRAM_WEBHOOK_URL`` is set (a request without the right secret token gets 403). In
private chats every text is a turn; in groups only a message that @mentions the bot, replies to it,
or is a /command for it. A reply streams live: "typing…" until the first text, then one message
edited with the growing text at most every ``FRONTDESK_TELEGRAM_EDIT_INTERVAL``, closed by a final
edit. Text over 4096 characters (UTF-16 units, as Telegram counts) continues in new messages, cut
at paragraph or sentence boundaries. Markdown becomes Telegram HTML; a part Telegram cannot parse
is sent as plain text instead, so a user never sees a failed message. Each chat is paced to
Telegram's limits (one message or edit a second, 20 a minute in groups), and a 429 is waited out
and retried, so no reply is lost.

Everything Telegram-specific lives here: past this module a message is an ``InboundMessage``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web
from chatgpt_md_converter import telegram_format
from telegram import BotCommand, Message, ReplyParameters, Update, User
from telegram.constants import ChatAction, ChatType, MessageEntityType, MessageLimit, ParseMode
from telegram.error import BadRequest, InvalidToken, NetworkError, RetryAfter, TelegramError
from telegram.ext import AIORateLimiter, Application, ApplicationBuilder, ContextTypes, TypeHandler
from telegram.warnings import PTBDeprecationWarning

from frontdesk import texts
from frontdesk.errors import ConfigError, FrontdeskError
from frontdesk.settings import Settings
from frontdesk.wire import InboundMessage

from .channel import ReplyStream
from .text import split_text, utf16_len

if TYPE_CHECKING:
    from .gateway import Gateway

log = logging.getLogger(__name__)

LIMIT = MessageLimit.MAX_TEXT_LENGTH  # 4096, counted after entity parsing
TYPING_EVERY_S = 4.0  # a chat action shows for 5 s
PRIVATE_GAP_S = 1.0  # least time between two messages or edits in a private chat…
GROUP_GAP_S = 3.0  # …and in a group (20 a minute)
SEND_ATTEMPTS = 8
ALLOWED_UPDATES = ["message", "edited_message"]
COMMANDS = [
    BotCommand("start", "Say hello"),
    BotCommand("help", "What I can do"),
    BotCommand("reset", "Start a new conversation"),
    BotCommand("stop", "Stop the answer in progress"),
]


class TelegramChannel:
    name = "telegram"
    replies_from_any_gateway = True  # a chat id is all a reply needs

    def __init__(self, settings: Settings) -> None:
        assert settings.telegram_token, "TelegramChannel needs FRONTDESK_TELEGRAM_TOKEN"
        self.settings = settings
        self._token = settings.telegram_token
        allowed = [u.strip() for u in settings.telegram_allowed_users]
        self._allowed_ids = {u for u in allowed if u.lstrip("-").isdigit()}
        self._allowed_names = {
            u.lstrip("@").lower() for u in allowed if not u.lstrip("-").isdigit()
        }
        self._refused: set[int] = set()
        self._secret = (
            settings.telegram_webhook_secret or hashlib.sha256(self._token.encode()).hexdigest()
        )
        self._last_call: dict[int, float] = {}  # chat id -> when it was last sent to
        self._gateway: Gateway | None = None
        self.app: Application[Any, Any, Any, Any, Any, Any] | None = None
        self.bot_id = 0
        self.username = ""
        self.retries_after_429 = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> TelegramChannel | None:
        return cls(settings) if settings.telegram_token else None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, gateway: Gateway) -> None:
        self._gateway = gateway
        builder = (
            ApplicationBuilder()
            .token(self._token)
            .base_url(self.settings.telegram_api_url)
            # overall 30/s and 20/min per group; a 429 comes back to _call, which waits it out
            .rate_limiter(AIORateLimiter(max_retries=0))
        )
        webhook = self.settings.telegram_webhook_url
        if webhook:
            builder = builder.updater(None)
        app = builder.build()
        app.add_handler(TypeHandler(Update, self._on_update))
        app.add_error_handler(self._on_error)
        self.app = app  # from here on, stop() undoes what was begun
        try:
            await app.initialize()  # getMe: checks the token and the API URL
            await app.bot.set_my_commands(COMMANDS)
            if webhook:
                gateway.http.add_route("POST", urlsplit(webhook).path or "/", self._on_webhook)
                await app.bot.set_webhook(
                    webhook, secret_token=self._secret, allowed_updates=ALLOWED_UPDATES
                )
            else:
                assert app.updater is not None
                await app.updater.start_polling(allowed_updates=ALLOWED_UPDATES)
            await app.start()
        except BaseException as exc:
            try:
                await self.stop()  # a start that fails halfway leaves nothing running
            except Exception as cleanup:  # the start's own error is the one to raise
                log.warning("telegram channel did not shut down cleanly: %r", cleanup)
            if isinstance(exc, InvalidToken):  # its text holds the token
                raise ConfigError(
                    "Telegram refused FRONTDESK_TELEGRAM_TOKEN: check it with @BotFather"
                ) from exc
            if isinstance(exc, TelegramError):
                raise FrontdeskError(
                    f"cannot reach the Telegram Bot API at {self.settings.telegram_api_url}: {exc}"
                ) from exc
            raise
        self.bot_id, self.username = app.bot.id, app.bot.username

    async def stop(self) -> None:
        app, self.app = self.app, None
        if app is None:
            return
        if app.updater is not None and app.updater.running:
            await app.updater.stop()
        if app.running:
            await app.stop()
        await app.shutdown()

    # -- inbound --------------------------------------------------------------------------------

    async def _on_webhook(self, request: web.Request) -> web.Response:
        secret = request.headers.get("X-Telegram-Bot-Api-Secret-Token", "")
        if not hmac.compare_digest(secret.encode(), self._secret.encode()):
            return web.Response(status=403, text="wrong secret token")
        if self.app is None:
            return web.Response(status=503)
        try:
            update = Update.de_json(await request.json(), self.app.bot)
        except ValueError:
            return web.Response(status=400, text="not a JSON update")
        # Stored and queued before the 200 goes back: Telegram retries what is not acked.
        await self.app.process_update(update)
        return web.Response()

    async def _on_update(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        msg = update.message  # edited messages, channel posts and the rest are ignored
        if msg is None or msg.from_user is None or msg.from_user.is_bot:
            return
        private = msg.chat.type == ChatType.PRIVATE
        if not private and not self._addressed(msg):
            return
        if not self._allowed(msg.from_user):
            if msg.from_user.id not in self._refused:
                self._refused.add(msg.from_user.id)
                await self._say(msg, texts.NOT_ALLOWED)
            return
        if msg.text is None:
            await self._say(msg, texts.NON_TEXT)
            return
        assert self._gateway is not None
        await self._gateway.handle(self._inbound(msg, self._without_mention(msg.text)), self)

    def _addressed(self, msg: Message) -> bool:
        """In a group: a reply to the bot, an @mention of it, or a /command for it."""
        replied = msg.reply_to_message
        if replied is not None and replied.from_user and replied.from_user.id == self.bot_id:
            return True
        for entity, value in msg.parse_entities().items():
            if entity.type == MessageEntityType.MENTION and self._is_me(value[1:]):
                return True
            if entity.type == MessageEntityType.BOT_COMMAND and entity.offset == 0:
                _command, _at, target = value.partition("@")
                return not target or self._is_me(target)
        return False

    def _is_me(self, username: str) -> bool:
        return username.lower() == self.username.lower()

    def _without_mention(self, text: str) -> str:
        """ "@bot what time is it?" -> "what time is it?"; "/reset@bot" -> "/reset"."""
        cleaned = re.sub(rf"@{re.escape(self.username)}\b", "", text, flags=re.IGNORECASE)
        return cleaned.strip() if cleaned.strip() else text

    def _allowed(self, user: User) -> bool:
        if not self._allowed_ids and not self._allowed_names:
            return True
        name = (user.username or "").lower()
        return str(user.id) in self._allowed_ids or (bool(name) and name in self._allowed_names)

    def _inbound(self, msg: Message, text: str) -> InboundMessage:
        user = msg.from_user
        assert user is not None
        topic = msg.message_thread_id if msg.is_topic_message else None
        return InboundMessage(
            platform=self.name,
            chat_id=str(msg.chat.id),
            user_id=str(user.id),
            message_id=str(msg.message_id),
            text=text,
            user_name=user.full_name or user.username,
            thread_id=None if topic is None else str(topic),
            meta={"chat_type": msg.chat.type, "reply_to": str(msg.message_id)},
        )

    async def _say(self, msg: Message, text: str) -> None:
        """A short plain reply of the channel's own (refusals, "text only")."""
        topic = msg.message_thread_id if msg.is_topic_message else None
        chat = _ChatRef(msg.chat.id, msg.chat.type, topic, msg.message_id)
        await self._call(chat, lambda **kw: self._bot.send_message(**chat.target, **kw), None, text)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        # by id and kind: an update holds what the user wrote, which no log line carries
        if isinstance(update, Update):
            kind = next((k for k in Update.ALL_TYPES if getattr(update, k, None)), "unknown")
            what = f"{update.update_id} ({kind})"
        else:
            what = type(update).__name__
        log.error("telegram update %s failed", what, exc_info=context.error)

    # -- outbound -------------------------------------------------------------------------------

    @property
    def _bot(self) -> Any:
        assert self.app is not None, "the Telegram channel is not started"
        return self.app.bot

    async def deliver(self, reply: ReplyStream) -> None:
        inbound = reply.inbound
        chat = _ChatRef(
            int(inbound.chat_id),
            inbound.meta.get("chat_type", ChatType.PRIVATE),
            int(inbound.thread_id) if inbound.thread_id else None,
            int(inbound.meta["reply_to"]) if "reply_to" in inbound.meta else None,
        )
        await _LiveReply(self, chat, self.settings.telegram_edit_interval).run(reply)

    async def _call(
        self,
        chat: _ChatRef,
        method: Callable[..., Awaitable[Any]],
        html: str | None,
        plain: str,
    ) -> Any:
        """Send or edit, paced for the chat: ``html`` when given, else ``plain``. Waits out 429s
        and network failures; when Telegram cannot parse the HTML (or counts it too long), sends
        ``plain`` instead. Returns the API's result, or None for "message is not modified"."""
        text, parse_mode = (html, ParseMode.HTML) if html is not None else (plain, None)
        for attempt in range(1, SEND_ATTEMPTS + 1):
            await self._pace(chat)
            try:
                return await method(text=text, parse_mode=parse_mode)
            except RetryAfter as exc:
                self.retries_after_429 += 1
                with warnings.catch_warnings():  # PTB 22 warns that it will become a timedelta
                    warnings.simplefilter("ignore", PTBDeprecationWarning)
                    wait = exc.retry_after
                seconds = wait.total_seconds() if hasattr(wait, "total_seconds") else float(wait)
                log.warning("telegram 429 in chat %s: waiting %.1fs", chat.id, seconds)
                self._last_call[chat.id] = time.monotonic() + seconds
            except BadRequest as exc:
                reason = str(exc).lower()
                if "not modified" in reason:
                    return None
                if parse_mode is None or not ("parse entities" in reason or "too long" in reason):
                    raise
                log.info("telegram rejected HTML (%s); sending plain text", exc)
                text, parse_mode = plain, None
            except NetworkError as exc:
                if attempt == SEND_ATTEMPTS:
                    raise
                log.warning("telegram unreachable (%s); retrying", exc)
                await asyncio.sleep(min(2.0**attempt / 4, 10.0))
            finally:
                self._answered(chat)
        raise FrontdeskError(f"could not send to Telegram chat {chat.id}")

    async def _pace(self, chat: _ChatRef) -> None:
        """Wait for the chat's next slot. Slots are counted from when the previous call was
        answered, which is after Telegram received it, so transit jitter cannot squeeze two
        calls into one second at Telegram's end."""
        gap = PRIVATE_GAP_S if chat.type == ChatType.PRIVATE else GROUP_GAP_S
        now = time.monotonic()
        ready = self._last_call.get(chat.id, 0.0) + gap
        self._last_call[chat.id] = max(now, ready)  # reserve the slot before sleeping
        if ready > now:
            await asyncio.sleep(ready - now)

    def _answered(self, chat: _ChatRef) -> None:
        self._last_call[chat.id] = max(self._last_call.get(chat.id, 0.0), time.monotonic())


class _ChatRef:
    """Where a reply goes: chat, its type, forum topic, and the message it answers."""

    __slots__ = ("id", "reply_to", "thread", "type")

    def __init__(self, chat_id: int, chat_type: str, thread: int | None, reply_to: int | None):
        self.id, self.type, self.thread, self.reply_to = chat_id, chat_type, thread, reply_to

    @property
    def target(self) -> dict[str, Any]:
        target: dict[str, Any] = {"chat_id": self.id, "message_thread_id": self.thread}
        if self.type != ChatType.PRIVATE and self.reply_to is not None:
            target["reply_parameters"] = ReplyParameters(
                self.reply_to, allow_sending_without_reply=True
            )
        return target


class _LiveReply:
    """One reply shown as it streams: messages sent so far and the text each shows."""

    def __init__(self, channel: TelegramChannel, chat: _ChatRef, interval: float) -> None:
        self.channel = channel
        self.chat = chat
        self.interval = interval
        self.shown: list[tuple[int, str]] = []  # (message id, HTML it shows)

    async def run(self, reply: ReplyStream) -> None:
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
        if final:
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
