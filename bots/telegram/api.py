"""The Telegram channel's calls to the Bot API: sends and edits paced for each chat (one a second
in a private chat, one every 3 s in a group), counted from Telegram's answer to the call before;
a 429 waited out for its ``retry_after`` and a network failure retried, so no reply is lost; HTML
that Telegram cannot parse sent again as plain text. ``ChatRef`` says where a reply goes."""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from telegram import ReplyParameters
from telegram.constants import ChatType, ParseMode
from telegram.error import BadRequest, NetworkError, RetryAfter
from telegram.ext import Application
from telegram.request import HTTPXRequest, RequestData
from telegram.warnings import PTBDeprecationWarning

from frontdesk import metrics
from frontdesk.errors import FrontdeskError, QueueUnavailable

if TYPE_CHECKING:
    pass


log = logging.getLogger(__name__)

PRIVATE_GAP_S = 1.0  # least time between two messages or edits in a private chat…
GROUP_GAP_S = 3.0  # …and in a group (20 a minute)
# more between two gateways' calls to one chat: the second's transit may be the shorter
SHARED_MARGIN_S = 0.1
SEND_ATTEMPTS = 8
# sends and edits over all chats: Telegram's 30 a second for a bot, spaced evenly (a burst of
# 30 then 30 a second would put more than 30 in one second), a sixth under it: a call that
# leaves late (a busy process wakes late from its wait) must not put 31 into one second at
# Telegram's end while the later ones leave on time (at 28 a second, 80 ms late could)
BOT_GAP_S = 1 / 25


class CountedRequest(HTTPXRequest):
    """python-telegram-bot's HTTP transport, counting each Bot API call and each 429 by method
    (``frontdesk_platform_calls``, ``frontdesk_platform_rate_limited``). The method is the URL's
    last part: the token before it is never a label."""

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: Any = HTTPXRequest.DEFAULT_NONE,
        write_timeout: Any = HTTPXRequest.DEFAULT_NONE,
        connect_timeout: Any = HTTPXRequest.DEFAULT_NONE,
        pool_timeout: Any = HTTPXRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        endpoint = url.rsplit("/", 1)[-1]
        metrics.PLATFORM_CALLS.labels("telegram", endpoint).inc()
        code, payload = await super().do_request(
            url, method, request_data, read_timeout, write_timeout, connect_timeout, pool_timeout
        )
        if code == 429:
            metrics.PLATFORM_LIMITED.labels("telegram", endpoint).inc()
        return code, payload


class ChatRef:
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


class TelegramApi:
    """The sending part of ``TelegramChannel``, which sets these attributes."""

    app: Application[Any, Any, Any, Any, Any, Any] | None
    retries_after_429: int
    _last_call: dict[int, float]  # chat id -> when it was last sent to
    # scaled mode: reserves the next moment of the chat and of the bot among every gateway's
    # calls, in one round trip (TurnQueue.slot)
    shared_slot: Callable[[list[tuple[str, float, float]]], Awaitable[float]] | None = None
    bot_id: int

    @property
    def _bot(self) -> Any:
        assert self.app is not None, "the Telegram channel is not started"
        return self.app.bot

    async def _call(
        self,
        chat: ChatRef,
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

    async def _pace(self, chat: ChatRef) -> None:
        """Wait for the chat's next slot. Slots are counted from when the previous call was
        answered, which is after Telegram received it, so transit jitter cannot squeeze two
        calls into one second at Telegram's end."""
        gap = PRIVATE_GAP_S if chat.type == ChatType.PRIVATE else GROUP_GAP_S
        now = time.monotonic()
        ready = self._last_call.get(chat.id, 0.0) + gap
        self._last_call[chat.id] = max(now, ready)  # reserve the slot before sleeping
        if ready > now:
            await asyncio.sleep(ready - now)
        if self.shared_slot is not None:  # among every gateway's calls: the chat's, the bot's
            places = [(f"telegram:chat:{chat.id}", gap, SHARED_MARGIN_S),
                      (f"telegram:bot:{self.bot_id}", BOT_GAP_S, 0.0)]  # fmt: skip
            try:
                wait = await self.shared_slot(places)
            except QueueUnavailable as exc:
                log.warning("cannot pace chat %s with the other gateways: %s", chat.id, exc)
                wait = 0.0
            if wait > 0:
                await asyncio.sleep(wait)

    def _answered(self, chat: ChatRef) -> None:
        self._last_call[chat.id] = max(self._last_call.get(chat.id, 0.0), time.monotonic())
