"""``TelegramChannel``: construction, start and stop (long polling or webhook), taking updates
(who is answered, the allowlist, commands, mentions) and delivering replies. Sending is
``TelegramApi``'s (``api``), the live reply ``LiveReply``'s (``reply``)."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import re
import time
import warnings
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web
from telegram import BotCommand, CallbackQuery, Message, Update, User
from telegram.constants import ChatType, MessageEntityType
from telegram.error import InvalidToken, TelegramError
from telegram.ext import AIORateLimiter, Application, ApplicationBuilder, ContextTypes, TypeHandler
from telegram.warnings import PTBUserWarning

from frontdesk import texts
from frontdesk.backoff import Backoff
from frontdesk.errors import ConfigError, FrontdeskError, NotAccepted, QueueUnavailable
from frontdesk.settings import Settings
from frontdesk.supervisor import cancel_and_wait
from frontdesk.wire import InboundMessage

from ..channel import ReplyStream

if TYPE_CHECKING:
    from ..gateway import Gateway

from .api import ChatRef, CountedRequest
from .desk import TelegramDesk
from .payloads import ALLOWED_UPDATES, readable
from .reply import LiveReply, parse_rating

log = logging.getLogger(__name__)
POLL_LEASE_MS = 6_000  # a dead poller's lease lapses after this (see _poll)…
POLL_RENEW_S = 1.5  # …renewed this often by the poller, and tried this often by the others
POLL_TIMEOUT_S = 10  # getUpdates' long poll
# With max_retries=0 the rate limiter hands each 429 straight back (api.py waits it out and logs it
# in one line), but logs it first as an error with a traceback: that line is noise.
logging.getLogger("telegram.ext.AIORateLimiter").setLevel(logging.CRITICAL)
# _fetch calls getUpdates through do_api_request on purpose (it reads the JSON update by update),
# which PTB warns about each time
warnings.filterwarnings("ignore", message=r".*'Bot\.getUpdates'", category=PTBUserWarning)

COMMANDS = [
    BotCommand("start", "Say hello"),
    BotCommand("help", "What I can do"),
    BotCommand("reset", "Start a new conversation"),
    BotCommand("stop", "Stop the answer in progress"),
]


class TelegramChannel(TelegramDesk):
    name = "telegram"
    replies_from_any_gateway = True  # a chat id is all a reply needs
    bursts = True  # users split a question over quick messages (FRONTDESK_BURST_MS)
    # A message that cannot be stored is not acked: its webhook call gets a 503 (Telegram sends
    # it again), and polling takes no later update until it is stored
    redelivers = True

    def __init__(self, settings: Settings) -> None:
        assert settings.telegram_token, "TelegramChannel needs FRONTDESK_TELEGRAM_TOKEN"
        self.settings = settings
        # a reply is edited at most this often (LiveReply): its deltas need come no faster
        self.shows_every_s = settings.telegram_edit_interval
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
        self._not_accepted: set[int] = set()  # webhook updates refused (storage down)
        self._polling: asyncio.Task[None] | None = None
        self._offset: int | None = None  # polling: the next update to take
        self._lease_trouble = False  # the poller lease could not be reached (logged once)
        self._held_until = 0.0  # this term's lease holds until then, as last renewed
        self._renewed = asyncio.Event()  # set at each renewal that found this term's token

    @classmethod
    def from_settings(cls, settings: Settings) -> TelegramChannel | None:
        return cls(settings) if settings.telegram_token else None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, gateway: Gateway) -> None:
        self._gateway = gateway
        if gateway.queue.shared_by_workers:  # other gateways may send to the same chats
            self.shared_slot = functools.partial(gateway.queue.slot, owner=gateway.id)
        app = (
            ApplicationBuilder()
            .token(self._token)
            .base_url(self.settings.telegram_api_url)
            # overall 30/s and 20/min per group; a 429 comes back to _call, which waits it out
            .rate_limiter(AIORateLimiter(max_retries=0))
            # PTB's own transports (its defaults: 256 connections, 1 for getUpdates), counted
            .request(CountedRequest(connection_pool_size=256))
            .get_updates_request(CountedRequest(connection_pool_size=1))
            .updater(None)  # polling is the channel's own (_poll): see its docstring
            .build()
        )
        app.add_handler(TypeHandler(Update, self._on_update))
        app.add_error_handler(self._on_error)
        self.app = app  # from here on, stop() undoes what was begun
        webhook = self.settings.telegram_webhook_url
        try:
            await app.initialize()  # getMe: checks the token and the API URL
            await app.bot.set_my_commands(COMMANDS)
            if webhook:
                gateway.http.add_route("POST", urlsplit(webhook).path or "/", self._on_webhook)
                await app.bot.set_webhook(
                    webhook, secret_token=self._secret, allowed_updates=ALLOWED_UPDATES
                )
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
        if not webhook:
            self._polling = asyncio.create_task(self._poll(gateway))

    async def stop(self) -> None:
        if self._polling is not None:
            await cancel_and_wait([self._polling])
            self._polling = None
        app, self.app = self.app, None
        if app is None:
            return
        if app.running:
            await app.stop()
        await app.shutdown()

    # -- polling --------------------------------------------------------------------------------

    async def _poll(self, gateway: Gateway) -> None:
        """Long polling, by one gateway of all that run this bot: the one holding the bot's
        poller role in the queue (Redis; embedded, the one process). Its lease is renewed every
        ``POLL_RENEW_S`` and lapses ``POLL_LEASE_MS`` after the last renewal, so when the poller
        dies another gateway, trying as often, polls within ``POLL_LEASE_MS`` + ``POLL_RENEW_S``.
        Two pollers would get Telegram's 409 "terminated by other getUpdates request".

        Each term has its fencing token. No getUpdates call is made unless the last renewal
        that found this term's token leaves the lease more than a renewal period to run; a
        poller that finds another token (it stalled past the lease, and another took over),
        or cannot reach Redis until that margin, ends its term before its next call."""
        role = f"telegram:poller:{self.bot_id}"
        try:
            while True:
                token = await self._hold(role, gateway.owner)
                if token <= 0:
                    await asyncio.sleep(POLL_RENEW_S)
                    continue
                log.warning("telegram: this gateway polls for updates now (term %d)", token)
                if not await self._poll_term(role, gateway.owner, token):
                    return
        finally:
            await self._let_go(role, gateway.owner)

    async def _poll_term(self, role: str, owner: str, token: int) -> bool:
        """Poll while the lease with ``token`` holds. Returns when it is lost (True: try for
        another term) or when polling cannot go on at all (False)."""
        self._held_until = time.monotonic() + POLL_LEASE_MS / 1000
        fetching = asyncio.create_task(self._fetch())
        try:
            while True:
                done, _ = await asyncio.wait({fetching}, timeout=POLL_RENEW_S)
                if done:
                    failed = fetching.exception()
                    if failed is None:
                        return False  # _fetch ends only when the token is refused
                    log.error("telegram: polling failed; starting again", exc_info=failed)
                    await asyncio.sleep(POLL_RENEW_S)
                    return True
                asked = time.monotonic()
                held = await self._hold(role, owner)
                if held == token:
                    self._held_until = asked + POLL_LEASE_MS / 1000
                    self._renewed.set()
                elif held >= 0 or not self._still_held():
                    # another holds it, or it may lapse before Redis answers again
                    log.warning("telegram: this gateway's polling term %d is over", token)
                    return True
        except asyncio.CancelledError:  # the gateway stops
            await cancel_and_wait([fetching])
            if self._still_held():
                await self._confirm()
            raise
        finally:
            await cancel_and_wait([fetching])

    def _still_held(self) -> bool:
        """Whether this term's lease is known to hold a renewal period longer at least."""
        return time.monotonic() < self._held_until - POLL_RENEW_S

    async def _confirm(self) -> None:
        """Confirm the updates taken, so the next poller does not get them again (it would
        drop them by their dedupe keys, but that is work)."""
        if self._offset is None:
            return
        confirm = {"offset": self._offset, "timeout": 0, "limit": 1}
        try:  # the JSON: nothing of the update it returns is read
            async with asyncio.timeout(2):
                await self._bot.do_api_request("getUpdates", api_kwargs=confirm)
        except Exception as exc:  # the gateway is stopping: a warning, whatever it was
            log.warning("telegram: could not confirm the updates taken: %r", exc)

    async def _hold(self, role: str, owner: str) -> int:
        """The role's fencing token, or 0 when another holds it; -1 when Redis cannot say."""
        assert self._gateway is not None
        try:
            token = await self._gateway.queue.hold_role(role, owner, POLL_LEASE_MS)
        except QueueUnavailable as exc:
            if not self._lease_trouble:  # once, not every try
                log.warning("telegram: cannot take or renew the poller lease: %s", exc)
            self._lease_trouble = True
            return -1
        self._lease_trouble = False
        return token

    async def _let_go(self, role: str, owner: str) -> None:
        assert self._gateway is not None
        try:  # so another gateway polls at once, not when the lease lapses
            await self._gateway.queue.let_role_go(role, owner)
        except QueueUnavailable as exc:
            log.warning("telegram: cannot give up the poller lease: %s", exc)

    async def _fetch(self) -> None:
        """getUpdates, and each update taken (stored and queued) in order before the offset
        moves past it: Telegram drops an update only when a later call confirms it, so a
        gateway killed at any moment loses nothing, and the next poller gets again what was not
        confirmed (the message's dedupe key drops what was stored already)."""
        bot = self._bot
        self._offset = None
        cleared = False
        backoff = Backoff(first_s=0.5, cap_s=10.0)
        while True:
            while not self._still_held():  # the fence: _poll_term renews it or ends the term
                self._renewed.clear()
                await self._renewed.wait()
            try:
                if not cleared:  # a webhook and getUpdates exclude each other
                    cleared = await bot.delete_webhook()
                # the JSON, read here update by update: PTB's get_updates fails the whole batch
                # on one update it cannot read (and logs the batch, users' text included)
                asked: dict[str, Any] = {"timeout": POLL_TIMEOUT_S,
                                         "allowed_updates": ALLOWED_UPDATES}  # fmt: skip
                if self._offset is not None:
                    asked["offset"] = self._offset
                batch = await bot.do_api_request(
                    "getUpdates", api_kwargs=asked, read_timeout=POLL_TIMEOUT_S + 10
                )
            except InvalidToken:
                log.error("telegram refused the bot token (revoked?): polling stops")
                return
            except TelegramError as exc:  # 409 (a webhook, another poller), network, 5xx
                log.warning("telegram: getUpdates failed (%s); trying again", exc)
                await backoff.wait()
                continue
            except Exception:  # an answer PTB cannot read, say: logged, and polled again
                log.exception("telegram: getUpdates failed; trying again")
                await backoff.wait()
                continue
            backoff.reset()
            for data in batch if isinstance(batch, list) else ():
                update_id = data.get("update_id") if isinstance(data, dict) else None
                update = self._read(data)
                if update is not None:
                    await self._take_polled(update)
                else:
                    log.warning("telegram: update %s cannot be read; skipped", update_id)
                if isinstance(update_id, int):
                    self._offset = max(self._offset or 0, update_id + 1)

    async def _take_polled(self, update: Update) -> None:
        """Take one polled update, waiting for storage while it is down (Telegram keeps what
        is not confirmed, and the updates after it wait in order)."""
        backoff = Backoff(first_s=0.5, cap_s=5.0)
        while True:
            try:
                await self._take(update)
                return
            except NotAccepted as exc:
                log.error("telegram update %s not taken (%s); trying again", update.update_id, exc)
                await backoff.wait()
            except Exception as exc:  # this update cannot be taken at all: on to the next
                log.error("telegram update %s failed", self._describe(update), exc_info=exc)
                return

    # -- inbound --------------------------------------------------------------------------------

    async def _on_webhook(self, request: web.Request) -> web.Response:
        secret = request.headers.get("X-Telegram-Bot-Api-Secret-Token", "")
        if not hmac.compare_digest(secret.encode(), self._secret.encode()):
            return web.Response(status=403, text="wrong secret token")
        if self.app is None:
            return web.Response(status=503)
        try:
            data = await request.json()
        except ValueError:
            return web.Response(status=400, text="not JSON")
        update = self._read(data)
        if update is None:  # acked: sent again, it would hold up the updates after it
            log.warning("telegram webhook: an update that cannot be read; dropped")
            return web.Response()
        # Stored and queued before the 200 goes back: Telegram retries what is not acked.
        await self.app.process_update(update)
        if update.update_id in self._not_accepted:
            self._not_accepted.discard(update.update_id)
            return web.Response(status=503, text="cannot store the message now; send it again")
        return web.Response()

    def _read(self, data: Any) -> Update | None:
        """The update in ``data`` (its JSON), or None for one in a shape the channel does not
        read. python-telegram-bot reads the fields frontdesk does not look at."""
        try:
            return Update.de_json(data, self._bot) if readable(data) else None
        except (AttributeError, KeyError, TypeError, ValueError):
            return None

    async def _on_update(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        """A webhook's update (polled ones go to ``_take_polled``)."""
        try:
            await self._take(update)
        except NotAccepted as exc:
            log.error("telegram update %s not taken (%s)", update.update_id, exc)
            self._not_accepted.add(update.update_id)

    async def _take(self, update: Update) -> None:
        if update.callback_query is not None:
            await self._on_button(update.callback_query)
            return
        msg = update.message  # edited messages, channel posts and the rest are ignored
        if msg is None or msg.from_user is None or msg.from_user.is_bot:
            return
        if self._in_desk(msg.chat.id):  # agents at the handoff desk, not customers
            await self._agent_message(msg)
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

    async def _on_button(self, query: CallbackQuery) -> None:
        """A 👍 or 👎 under an answer: the rating is stored (one per user and answer), and the
        press is always answered, so the button stops spinning."""
        assert self._gateway is not None
        toast = None
        rating = parse_rating(query.data or "")
        if rating is not None:
            toast = await self._gateway.rate(self.name, str(query.from_user.id), *rating)
        try:
            await query.answer(text=toast)
        except TelegramError as exc:
            log.warning("could not answer a button press: %s", exc)

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
        chat = ChatRef(msg.chat.id, msg.chat.type, topic, msg.message_id)
        await self._call(chat, lambda **kw: self._bot.send_message(**chat.target, **kw), None, text)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        log.error("telegram update %s failed", self._describe(update), exc_info=context.error)

    @staticmethod
    def _describe(update: object) -> str:
        """An update by id and kind: it holds what the user wrote, which no log line carries."""
        if isinstance(update, Update):
            kind = next((k for k in Update.ALL_TYPES if getattr(update, k, None)), "unknown")
            return f"{update.update_id} ({kind})"
        return type(update).__name__

    # -- outbound -------------------------------------------------------------------------------

    async def deliver(self, reply: ReplyStream) -> None:
        inbound = reply.inbound
        chat = ChatRef(
            int(inbound.chat_id),
            inbound.meta.get("chat_type", ChatType.PRIVATE),
            int(inbound.thread_id) if inbound.thread_id else None,
            int(inbound.meta["reply_to"]) if "reply_to" in inbound.meta else None,
        )
        await LiveReply(self, chat, self.settings.telegram_edit_interval).run(reply)
