"""The gateway: the platform side's one entry point. Channels hand it messages; it turns each into a
queued turn and routes the reply deltas back to the channel that owns the chat.

For each message: clean the text (no NUL bytes, no lone surrogates), answer commands (/reset,
/help) and refuse what cannot be answered (empty, too long) politely; store the message, which
drops a duplicate of an event seen before (the dedupe key lives in storage, so it survives
restarts); queue the turn; and only then return, so a channel acks its platform after the message
is safe. Replies come back on this gateway's own reply stream.

A channel whose chats any gateway can post to (``replies_from_any_gateway``: Telegram, Slack, not
a console) is announced on the queue every few seconds, and its turns carry the message's route.
So a turn re-queued from the dead letters after its gateway went away is answered through this
gateway: its first delta brings the route, and the gateway opens the reply from it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from dataclasses import replace
from typing import TYPE_CHECKING

from frontdesk import texts
from frontdesk.errors import QueueUnavailable, StorageUnavailable
from frontdesk.settings import Settings
from frontdesk.storage import Store
from frontdesk.wire import InboundMessage, ReplyDelta, Turn

from .channel import ReplyStream
from .http import HttpServer

if TYPE_CHECKING:
    from frontdesk.engine.queue import TurnQueue

    from .channel import Channel

log = logging.getLogger(__name__)

_SURROGATE = re.compile("[\ud800-\udfff]")
ANNOUNCE_EVERY_S = 5.0  # how often a gateway says which channels it runs
ANNOUNCE_TTL_S = 20.0  # and for how long that holds if it goes silent
FINISHED_KEPT = 10_000  # finished turns remembered, so a late delta opens no second reply


def clean_text(text: str) -> str:
    """Text every database and platform accepts: NUL bytes removed (PostgreSQL refuses them), lone
    surrogates (undecodable input) replaced by U+FFFD."""
    return _SURROGATE.sub("\ufffd", text.replace("\x00", ""))


class Gateway:
    def __init__(
        self,
        settings: Settings,
        queue: TurnQueue,
        store: Store,
        channels: list[Channel],
    ) -> None:
        self.settings = settings
        self.id = settings.gateway_id
        self.queue = queue
        self.store = store
        self.channels = channels
        self._pending: dict[str, ReplyStream] = {}
        self._attempts: dict[str, int] = {}  # pending turn id -> the highest attempt seen
        self._generating: dict[tuple[str, str], str] = {}  # (platform, conversation) -> turn id
        self._deliveries: set[asyncio.Task[None]] = set()
        self._pump: asyncio.Task[None] | None = None
        self._announcer: asyncio.Task[None] | None = None
        # turn id -> the revival it finished as (0: as taken): a later revival opens a new reply
        self._finished: OrderedDict[str, int] = OrderedDict()
        self._revivals: dict[str, int] = {}  # turn id -> revival, for replies opened from a route
        self._by_name = {channel.name: channel for channel in channels}
        # the channels any gateway can post to: announced, and their turns carry their route
        self.shared = [c.name for c in channels if getattr(c, "replies_from_any_gateway", False)]
        self.http = HttpServer(settings.http_host, settings.http_port)

    async def start(self) -> None:
        """Start the reply pump, the channels in order, and the HTTP server if one needs it. A
        start that fails halfway undoes what it began (in reverse) and raises."""
        self._pump = asyncio.create_task(self._pump_replies(), name="gateway-replies")
        started: list[Channel] = []
        try:
            for channel in self.channels:
                await channel.start(self)  # webhook channels add their routes to self.http here
                started.append(channel)
            if self.http.needed:
                await self.http.start()
        except BaseException:
            for channel in reversed(started):
                try:
                    await channel.stop()
                except Exception as exc:  # the start's own error is the one to raise
                    log.warning("channel %s did not stop cleanly: %r", channel.name, exc)
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
            raise
        if self.shared:
            self._announcer = asyncio.create_task(self._announce(), name="gateway-announce")

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop taking webhooks, give replies being shown ``grace_s`` to finish (they need their
        channel), then stop the channels and the reply pump."""
        await self.http.stop()
        if self._announcer is not None:
            self._announcer.cancel()
            await asyncio.gather(self._announcer, return_exceptions=True)
            try:
                await self.queue.withdraw(self.id, self.shared)
            except Exception as exc:  # it expires by itself
                log.warning("cannot withdraw gateway %s: %r", self.id, exc)
        if self._deliveries:
            await asyncio.wait(self._deliveries, timeout=grace_s)
        for channel in reversed(self.channels):
            await channel.stop()
        for task in (*self._deliveries, self._pump):
            if task is not None:
                task.cancel()
        await asyncio.gather(*self._deliveries, return_exceptions=True)
        if self._pump is not None:
            await asyncio.gather(self._pump, return_exceptions=True)

    @property
    def pending(self) -> int:
        """Replies not yet fully shown to their users."""
        return len(self._deliveries)

    async def handle(self, msg: InboundMessage, channel: Channel) -> asyncio.Task[None] | None:
        """Take one message from ``channel``. Returns the task delivering its reply, or None when
        the message gets no reply of its own (a duplicate, or a /stop that ended another reply)."""
        text = clean_text(msg.text)
        if text != msg.text:
            msg = replace(msg, text=text)
        stripped = text.strip()
        if stripped.startswith("/"):
            return await self._command(channel, msg, stripped.split(maxsplit=1)[0].lower())
        if not stripped:
            return self._reply_now(channel, msg, texts.EMPTY_MESSAGE)
        if len(text) > self.settings.max_message_chars:
            return self._reply_now(
                channel, msg, texts.too_long(len(text), self.settings.max_message_chars)
            )
        try:
            recorded = await self.store.record_user_message(msg)
        except StorageUnavailable as exc:
            log.error("cannot store message %s: %s", msg.dedupe_key, exc)
            return self._reply_now(channel, msg, texts.STORAGE_DOWN)
        if recorded is None:
            log.info("duplicate message %s dropped", msg.dedupe_key)
            return None
        route = msg.route() if channel.name in self.shared else None
        turn = Turn(recorded.conversation_id, recorded.message_id, gateway=self.id, route=route)
        stream = ReplyStream(msg, turn.turn_id, timeout_s=self.settings.reply_timeout_s)
        self._pending[turn.turn_id] = stream
        try:
            await self.queue.submit(turn)
        except QueueUnavailable as exc:
            log.error("cannot queue turn %s: %s", turn.turn_id, exc)
            del self._pending[turn.turn_id]
            return self._reply_now(channel, msg, texts.QUEUE_DOWN)
        self._generating[(msg.platform, msg.conversation_key)] = turn.turn_id
        return self._deliver(channel, stream)

    async def _command(
        self, channel: Channel, msg: InboundMessage, command: str
    ) -> asyncio.Task[None] | None:
        if command in ("/reset", "/new"):
            return self._reply_now(
                channel, msg, await self.reset(msg.platform, msg.conversation_key)
            )
        if command == "/start":
            return self._reply_now(channel, msg, self.settings.greeting)
        if command == "/help":
            return self._reply_now(channel, msg, texts.HELP)
        if command == "/stop":
            return await self._stop(channel, msg)
        return self._reply_now(channel, msg, texts.UNKNOWN_COMMAND)

    async def reset(self, platform: str, conversation_key: str) -> str:
        """Start a new conversation for the chat; returns what to tell the user. Channels whose
        platform has its own command route (Slack's slash commands) call this directly."""
        try:
            await self.store.reset_conversation(platform, conversation_key)
        except StorageUnavailable as exc:
            log.error("cannot reset %s: %s", conversation_key, exc)
            return texts.STORAGE_DOWN
        return texts.RESET

    async def continues_conversation(self, platform: str, conversation_key: str) -> bool:
        """Whether a message that does not address the bot belongs to a conversation it is in
        (a follow-up in a Slack thread). False when storage cannot tell."""
        try:
            return await self.store.has_active_conversation(platform, conversation_key)
        except StorageUnavailable as exc:
            log.error("cannot look up conversation %s: %s", conversation_key, exc)
            return False

    async def name_users(self, platform: str, names: dict[str, str]) -> None:
        """Record display names (user id -> name) a channel learnt after the users' messages
        were stored."""
        try:
            await self.store.set_user_names(platform, names)
        except StorageUnavailable as exc:
            log.warning("cannot record the names of %d users: %s", len(names), exc)

    async def _stop(self, channel: Channel, msg: InboundMessage) -> asyncio.Task[None] | None:
        """/stop: cancel the chat's reply in progress; it ends with what was generated so far."""
        turn_id = self._generating.get((msg.platform, msg.conversation_key))
        if turn_id is None or turn_id not in self._pending:
            return self._reply_now(channel, msg, texts.NOTHING_TO_STOP)
        try:
            await self.queue.cancel(turn_id)
        except QueueUnavailable as exc:
            log.error("cannot cancel turn %s: %s", turn_id, exc)
            return self._reply_now(channel, msg, texts.QUEUE_DOWN)
        return None

    def _reply_now(self, channel: Channel, msg: InboundMessage, text: str) -> asyncio.Task[None]:
        return self._deliver(channel, ReplyStream.immediate(msg, text))

    def _deliver(self, channel: Channel, stream: ReplyStream) -> asyncio.Task[None]:
        task = asyncio.create_task(self._run_delivery(channel, stream))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)
        return task

    async def _run_delivery(self, channel: Channel, stream: ReplyStream) -> None:
        try:
            await channel.deliver(stream)
        except Exception:
            log.exception("channel %s failed to deliver turn %s", channel.name, stream.turn_id)
        finally:
            self._pending.pop(stream.turn_id, None)
            self._attempts.pop(stream.turn_id, None)
            key = (stream.inbound.platform, stream.inbound.conversation_key)
            if self._generating.get(key) == stream.turn_id:
                del self._generating[key]

    async def _announce(self) -> None:
        """Say every few seconds which channels this gateway runs, so that a revived turn of
        theirs finds it."""
        while True:
            try:
                await self.queue.announce(self.id, self.shared, ANNOUNCE_TTL_S)
            except Exception as exc:  # Redis away: say it again next time
                log.warning("cannot announce gateway %s: %r", self.id, exc)
            await asyncio.sleep(ANNOUNCE_EVERY_S)

    async def _pump_replies(self) -> None:
        async for delta in self.queue.replies(self.id):
            stream = self._pending.get(delta.turn_id) or self._adopt(delta)
            if stream is None:
                log.debug("delta for unknown or finished turn %s ignored", delta.turn_id)
                continue
            stream.feed(delta)
            latest = max(self._attempts.get(delta.turn_id, 0), delta.attempt)
            self._attempts[delta.turn_id] = latest
            # Only the newest attempt's end ends the reply: a slow worker that finishes after
            # its turn was taken over ends nothing (ReplyStream shows none of its deltas)
            if delta.done and delta.attempt == latest:
                del self._pending[delta.turn_id]
                del self._attempts[delta.turn_id]
                self._finished[delta.turn_id] = self._revivals.pop(delta.turn_id, 0)
                if len(self._finished) > FINISHED_KEPT:
                    self._finished.popitem(last=False)

    def _adopt(self, delta: ReplyDelta) -> ReplyStream | None:
        """Open the reply of a revived turn from its route: one this gateway may not have taken,
        or whose first reply (the apology of a turn that gave up) it has shown already."""
        if delta.route is None:
            return None
        try:
            revival = int(delta.route.get("revived") or 0)
            msg = InboundMessage.from_route(delta.route)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("turn %s: unusable route (%r)", delta.turn_id, exc)
            return None
        if self._finished.get(delta.turn_id, -1) >= revival:
            return None  # a late copy of a reply already shown
        channel = self._by_name.get(msg.platform)
        if channel is None or channel.name not in self.shared:
            return None
        log.info("opening the reply of turn %s (revival %d)", delta.turn_id, revival)
        stream = ReplyStream(msg, delta.turn_id, timeout_s=self.settings.reply_timeout_s)
        self._pending[delta.turn_id] = stream
        self._revivals[delta.turn_id] = revival
        self._generating[(msg.platform, msg.conversation_key)] = delta.turn_id  # for /stop
        self._deliver(channel, stream)
        return stream
