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
import functools
import logging
import os
import re
import socket
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from frontdesk import logfmt, metrics, texts
from frontdesk.backoff import Backoff
from frontdesk.errors import ConfigError, NotAccepted, QueueUnavailable, StorageUnavailable
from frontdesk.settings import Settings
from frontdesk.storage import (
    REFUSED,
    AwaitingMessage,
    MessageStatus,
    Rating,
    RecordedMessage,
    ReplyFigures,
    Store,
)
from frontdesk.supervisor import Supervisor, TaskFailed, cancel_and_wait
from frontdesk.wire import InboundMessage, ReplyDelta, Turn, turn_id_of

from .admission import Admission
from .channel import ReplyStream
from .desk import Desk, is_handoff_request
from .http import HttpServer

if TYPE_CHECKING:
    from frontdesk.engine.queue import TurnQueue

    from .channel import Channel

log = logging.getLogger(__name__)

_SURROGATE = re.compile("[\ud800-\udfff]")
ANNOUNCE_EVERY_S = 5.0  # how often a gateway says which channels it runs
ANNOUNCE_TTL_S = 20.0  # and for how long that holds if it goes silent
FINISHED_KEPT = 10_000  # finished turns remembered, so a late delta opens no second reply
FINISHED_OK = 1 << 30  # in ``_finished``: shown whole, so no revival opens it again
FROM_STORAGE = 1 << 40  # the attempt of a resumed reply shown from storage: outranks any delta
LEASE_MS = 10_000  # one process serves a gateway id; a dead one's lease lapses after this
LEASE_WAIT_S = 60.0  # how long a starting gateway waits for its id's lease
FOSTER_CLEANUP_S = 5.0  # at stop, a fostering's time to end by itself (see stop)
RESUBMIT_FOR_S = 30.0  # how long a turn whose queueing failed is tried again (then: the sweep)


def gateway_id(settings: Settings, channels: list[Channel]) -> str:
    """The gateway's id: ``FRONTDESK_GATEWAY_ID``, else the channels it runs ("slack+telegram").
    Stable across restarts, so a restarted gateway finds its replies in progress."""
    if settings.gateway_id:
        return settings.gateway_id
    names = sorted(str(getattr(c, "identity", c.name)) for c in channels)
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", "+".join(names))[:64] or "gateway"


def _after(a: str, b: str) -> bool:
    """Whether stream entry id ``a`` comes after ``b``."""
    ta, _, sa = a.partition("-")
    tb, _, sb = b.partition("-")
    return (int(ta), int(sa or 0)) > (int(tb), int(sb or 0))


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
        self.id = gateway_id(settings, channels)
        self._owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.queue = queue
        self.store = store
        self.channels = channels
        self._pending: dict[str, ReplyStream] = {}
        self._attempts: dict[str, int] = {}  # pending turn id -> the highest attempt seen
        self._generating: dict[tuple[str, str], str] = {}  # (platform, conversation) -> turn id
        self._deliveries: set[asyncio.Task[None]] = set()
        self._cursor: str | None = None  # the reply stream's last entry read (set in start)
        self._replayed_to = "0-0"  # entries up to here were read before (by an earlier process)
        self._resubmits: set[asyncio.Task[None]] = set()
        self.tasks = Supervisor()
        self._ready = asyncio.Event()  # set once the channels are started
        # turn id -> the revival it finished as (0: as taken), or FINISHED_OK: a later revival of
        # a reply that ended in an apology opens a new reply
        self._finished: OrderedDict[str, int] = OrderedDict()
        self._revivals: dict[str, int] = {}  # turn id -> revival, for replies opened from a route
        self._by_name = {channel.name: channel for channel in channels}
        self._deliveries_by_turn: dict[str, asyncio.Task[None]] = {}
        self._shown_last: dict[tuple[str, str], asyncio.Task[None]] = {}  # chat -> its last reply
        self._owner_of: dict[str, str] = {}  # turn id -> the gateway id whose record it is
        self._fostered: dict[str, asyncio.Task[None]] = {}  # gone gateway -> taking its replies
        self._gone: set[str] = set()  # gateways seen without their lease in the last round
        # the channels any gateway can post to: announced, and their turns carry their route
        self.shared = [c.name for c in channels if getattr(c, "replies_from_any_gateway", False)]
        self.http = HttpServer(settings.http_host, settings.http_port)
        self.desk: Desk | None = None  # the handoff desk (FRONTDESK_DESK), made in start()
        self.admission = Admission(settings, queue)  # FRONTDESK_USER_RATE, FRONTDESK_MAX_BACKLOG
        # (platform, conversation) -> its failed answers in a row, while there are any
        self._failures: OrderedDict[tuple[str, str], int] = OrderedDict()

    @property
    def fatal(self) -> asyncio.Future[TaskFailed]:
        """Resolved when one of the gateway's long-running tasks keeps failing."""
        return self.tasks.fatal

    async def start(self) -> None:
        """Take the gateway id's lease (waiting while an earlier process of it may still hold
        it), resume the replies that were in progress, start the reply pump, the channels in
        order, and the HTTP server if one needs it. A start that fails halfway undoes what it
        began (in reverse) and raises."""
        if self.settings.desk:
            self.desk = Desk(self, self.store, self.settings.desks)
        await self._take_lease()
        await self._resume()
        self.tasks.spawn("gateway-replies", self._pump_replies)
        self.tasks.spawn("gateway-lease", self._keep_lease)
        started: list[Channel] = []
        try:
            for channel in self.channels:
                await channel.start(self)  # webhook channels add their routes to self.http here
                started.append(channel)
            if self.http.needed:
                await self.http.start()
            self._ready.set()  # the resumed replies may show now
        except BaseException:
            for task in self._deliveries:
                task.cancel()
            await asyncio.gather(*self._deliveries, return_exceptions=True)
            for channel in reversed(started):
                try:
                    await channel.stop()
                except Exception as exc:  # the start's own error is the one to raise
                    log.warning("channel %s did not stop cleanly: %r", channel.name, exc)
            await self.tasks.stop()
            await self._drop_lease()
            raise
        if self.shared:
            self.tasks.spawn("gateway-announce", self._announce)
            self.tasks.spawn("gateway-take-over", self._take_over)
        if self.desk is not None:
            self.tasks.spawn("gateway-desk", self.desk.watch)

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop taking messages, give replies being shown ``grace_s`` (``shutdown_grace_s``) to
        finish (they need their channel), then stop the channels and the reply pump. A reply
        still unfinished stays recorded: this gateway after a restart, or another one that runs
        its channel, finishes it in the same platform message."""
        grace_s = self.settings.shutdown_grace_s if grace_s is None else grace_s
        await self.http.stop()
        if self.tasks.running("gateway-announce"):
            await self.tasks.stop("gateway-announce", "gateway-take-over")
            try:
                await self.queue.withdraw(self.id, self.shared)
            except Exception as exc:  # it expires by itself
                log.warning("cannot withdraw gateway %s: %r", self.id, exc)
        if self._deliveries:
            _done, unfinished = await asyncio.wait(self._deliveries, timeout=grace_s)
            if unfinished:
                log.warning(
                    "%d replies unfinished at shutdown; they are resumed by the next gateway "
                    "that runs their channel",
                    len(unfinished),
                )
        for task in (*self._deliveries, *self._resubmits):
            task.cancel()
        await asyncio.gather(*self._deliveries, *self._resubmits, return_exceptions=True)
        # A fostering ends with the replies it finishes (cancelled just above): it stops its
        # helpers and lets the gone gateway's lease go, which a cancel now would cut short. It
        # is cancelled only if it has not ended within FOSTER_CLEANUP_S.
        if fostering := list(self._fostered.values()):
            _done, going_on = await asyncio.wait(fostering, timeout=FOSTER_CLEANUP_S)
            for task in going_on:
                task.cancel()
            await asyncio.gather(*going_on, return_exceptions=True)
        for channel in reversed(self.channels):
            await channel.stop()
        await self.tasks.stop()
        await self._drop_lease()

    async def _take_lease(self) -> None:
        """Take the gateway id's lease, waiting while another process holds it: one that just
        died (its lease lapses within 10 s) or one taking over its replies. Another gateway still
        running under the same id after a minute is a setup error."""
        waited = False
        deadline = asyncio.get_running_loop().time() + LEASE_WAIT_S
        while True:
            try:
                if await self.queue.hold_gateway(self.id, self._owner, LEASE_MS):
                    return
            except Exception as exc:
                raise QueueUnavailable(f"cannot take gateway id {self.id}: {exc!r}") from exc
            if not waited:
                log.warning(
                    "gateway id %s is held by another process (or one that just died); "
                    "waiting for it (set FRONTDESK_GATEWAY_ID to run several gateways)",
                    self.id,
                )
                waited = True
            if asyncio.get_running_loop().time() > deadline:
                raise ConfigError(
                    f"another gateway runs as {self.id!r}: give each gateway its own "
                    "FRONTDESK_GATEWAY_ID"
                )
            await asyncio.sleep(1.0)

    async def _keep_lease(self) -> None:
        while True:
            await asyncio.sleep(LEASE_MS / 3000)
            try:
                held = await self.queue.hold_gateway(self.id, self._owner, LEASE_MS)
            except Exception as exc:  # Redis away: try again next time
                log.warning("cannot renew gateway %s: %r", self.id, exc)
                continue
            if not held:  # its replies are another's now: stop showing them at once
                self.tasks.give_up(f"another process took gateway id {self.id}")
                return

    async def _drop_lease(self) -> None:
        try:
            await self.queue.let_gateway_go(self.id, self._owner)
        except Exception as exc:  # it lapses by itself
            log.warning("cannot release gateway %s: %r", self.id, exc)

    async def _resume(self) -> None:
        """Open again the replies an earlier process of this gateway left unfinished, from their
        records: each is shown from its start in the platform messages already posted for it."""
        records = await self.queue.tracked(self.id)
        cursor = await self.queue.cursor(self.id)
        start = cursor
        after = await self._reopen(records, owner=self.id)
        if after is not None and (start is None or _after(start, after)):
            start = after
        # A gateway's first run reads from the stream's newest entry on (what is there is older)
        self._cursor = start if start is not None else await self.queue.reply_head(self.id)
        self._replayed_to = cursor or self._cursor

    async def _reopen(self, records: dict[str, dict[str, Any]], *, owner: str) -> str | None:
        """Open again, from their records (gateway ``owner``'s), the replies in progress that a
        channel of this gateway shows, each in the platform messages already posted for it.
        A reply already stored whole is shown from storage at once; the others come again from
        the reply stream. Returns the entry to read that stream from (None: nothing to read)."""
        start: str | None = None
        for turn_id, record in records.items():
            if turn_id in self._pending:
                continue
            try:
                msg = InboundMessage.from_route(record["route"])
                posted = [str(p) for p in record.get("posted") or ()]
                after = str(record.get("after") or "0-0")
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                log.warning("turn %s: unusable delivery record (%r); dropped", turn_id, exc)
                await self.queue.untrack(owner, turn_id)
                continue
            channel = self._by_name.get(msg.platform)
            if channel is None:
                log.warning("turn %s: channel %s not run here; its reply waits", turn_id,
                            msg.platform)  # fmt: skip
                continue
            if owner == self.id:
                log.warning("resuming the reply of turn %s (%d posted)", turn_id, len(posted))
            else:
                log.warning("taking over the reply of turn %s from gateway %s", turn_id, owner)
            stream = self._open(
                channel, msg, turn_id, record=record, posted=posted, resumed=True, owner=owner
            )
            stored = await self._stored_reply(turn_id)
            if stored is not None:
                stream.feed(ReplyDelta(turn_id, 0, stored, done=True, attempt=FROM_STORAGE))
                self._attempts[turn_id] = FROM_STORAGE
            elif start is None or _after(start, after):
                start = after
        return start

    async def _stored_reply(self, turn_id: str) -> str | None:
        """The good reply stored for a turn's message, if the worker stored it already."""
        if not turn_id.startswith("m") or not turn_id[1:].isdigit():
            return None
        try:
            stored = await self.store.reply_to(int(turn_id[1:]))
        except StorageUnavailable as exc:
            log.warning("cannot look up the reply of turn %s: %s", turn_id, exc)
            return None
        if stored is None or stored.status != MessageStatus.OK:
            return None
        return stored.content

    def channel(self, name: str) -> Channel | None:
        """The channel of platform ``name`` this gateway runs, if it runs one."""
        return self._by_name.get(name)

    async def deliver_now(self, channel: Channel, msg: InboundMessage, text: str) -> None:
        """Say ``text`` in the chat ``msg`` came from (a person's answer, a notice)."""
        await self._reply_now(channel, msg, text)

    async def rate(self, platform: str, user_id: str, question_id: int, rating: Rating) -> str:
        """A user's 👍 or 👎 on the answer to their message ``question_id``; what to tell
        them (a toast)."""
        try:
            rated = await self.store.rate(question_id, f"{platform}:{user_id}", rating)
        except StorageUnavailable as exc:
            log.error("cannot store a rating: %s", exc)
            return texts.STORAGE_DOWN
        if rated is None:
            return texts.RATING_GONE
        metrics.FEEDBACK.labels(platform, rating.value).inc()
        if rating == Rating.DOWN and self.desk is not None:
            return f"{texts.RATED} {texts.OFFER_PERSON}"
        return texts.RATED

    @property
    def pending(self) -> int:
        """Replies not yet fully shown to their users."""
        return len(self._deliveries)

    @property
    def owner(self) -> str:
        """This process, as the holder of leases (unique, unlike the gateway id)."""
        return self._owner

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
        if self.desk is not None and is_handoff_request(text, self.settings.handoff_phrases):
            return await self._handoff_command(channel, msg, "/human")
        after = self.settings.handoff_after_failures
        key = (msg.platform, msg.conversation_key)
        if self.desk is not None and after and self._failures.get(key, 0) >= after:
            del self._failures[key]  # answers kept failing: a person takes this message
            return await self._handoff_command(channel, msg, "/human", reason="failures")
        anywhere = channel.name in self.shared
        reply_route = {**msg.route(), "gateway": self.id, "anywhere": anywhere}
        try:
            recorded: RecordedMessage | AwaitingMessage | None
            recorded = await self.store.record_user_message(msg, reply_route)
            retried = recorded is None
            if recorded is None:  # seen before: answered, unless its turn was lost
                recorded = await self.store.awaiting_reply(msg.dedupe_key)
        except StorageUnavailable as exc:
            log.error("cannot store message %s: %s", msg.dedupe_key, exc)
            if getattr(channel, "redelivers", False):  # its platform sends it again: not acked
                raise NotAccepted(f"message {msg.dedupe_key} not stored: {exc}") from exc
            return self._reply_now(channel, msg, texts.STORAGE_DOWN)
        if recorded is None:
            log.info("duplicate message %s dropped", msg.dedupe_key)
            return None
        if not retried:
            metrics.MESSAGES.labels(msg.platform).inc()
        if isinstance(recorded, RecordedMessage) and recorded.handed_off:
            # a person has the conversation: no turn, the message goes to the desk's thread
            if self.desk is not None:
                await self.desk.customer_said(recorded.conversation_id, msg)
            return None
        if not retried and self.admission.active:  # a new message (a retry was admitted)
            refusal = await self.admission.refusal(msg)
            if refusal is not None:
                reason, said = refusal
                metrics.REFUSED.labels(msg.platform, reason).inc()
                await self._refused(recorded.conversation_id, recorded.message_id, reason, said)
                return self._reply_now(channel, msg, said)
        turn = Turn(
            recorded.conversation_id,
            recorded.message_id,
            gateway=self.id,
            turn_id=turn_id_of(recorded.message_id),
            route=msg.route() if anywhere else None,
            user=f"{msg.platform}:{msg.user_id}",
            burst_ms=self.settings.burst_ms if getattr(channel, "bursts", False) else 0,
            flush_ms=round(1000 * getattr(channel, "shows_every_s", 0)),
        )
        # the turn's log lines carry its ids, its reply's delivery task's too
        with logfmt.turn_scope(turn.turn_id, turn.conversation_id, msg.platform):
            return await self._queue_turn(channel, msg, turn, retried=retried)

    async def _queue_turn(
        self, channel: Channel, msg: InboundMessage, turn: Turn, *, retried: bool
    ) -> asyncio.Task[None] | None:
        """Open the reply of a stored, admitted message and queue its turn."""
        if turn.turn_id in self._pending:
            return None  # a retry of a message whose reply is on its way here
        record = {"route": msg.route(), "after": self._cursor or "0-0", "posted": []}
        # Open the reply before the XADD: a worker can answer before this coroutine goes on,
        # and a delta for a reply not open yet would be dropped
        self._open(channel, msg, turn.turn_id, record=record)
        delivery = self._deliveries_by_turn[turn.turn_id]
        try:
            queued = await self.queue.submit(turn, tracked=(self.id, record))
        except QueueUnavailable as exc:
            log.error("cannot queue turn %s (%s); trying again", turn.turn_id, exc)
            queued = None
        if queued is False:  # a live turn answers it (another gateway queued it first)
            log.info("message %s dropped: its turn is live", msg.dedupe_key)
            await self._close(turn.turn_id)
            return None
        if retried:
            log.warning("message %s came again with no live turn: queued again", msg.dedupe_key)
        elif queued:
            log.debug("turn %s queued", turn.turn_id)
        if queued is None:  # stored, not queued: try again a while, then the sweep will
            task = asyncio.create_task(self._resubmit(turn, record))
            self._resubmits.add(task)
            task.add_done_callback(self._resubmits.discard)
        return delivery

    async def _refused(self, conversation_id: int, message_id: int, reason: str, said: str) -> None:
        """A message admission refused stays stored, with what the user was told as its failed
        reply: it awaits nothing, so no turn and no sweep answers it, and stats count it."""
        try:
            await self.store.record_reply(
                conversation_id, message_id, said, ReplyFigures(), error=f"{REFUSED}{reason}"
            )
        except StorageUnavailable as exc:  # the sweep answers it later: nothing is lost
            log.warning("cannot mark refused message %d: %s", message_id, exc)

    async def _close(self, turn_id: str) -> None:
        """Close a reply opened for nothing (its message is answered elsewhere)."""
        task = self._deliveries_by_turn.get(turn_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._untrack(turn_id)

    async def _resubmit(self, turn: Turn, record: dict[str, Any]) -> None:
        backoff = Backoff(first_s=0.2, cap_s=5.0)
        deadline = asyncio.get_running_loop().time() + RESUBMIT_FOR_S
        while asyncio.get_running_loop().time() < deadline:
            await backoff.wait()
            if turn.turn_id not in self._pending:
                return  # answered: the XADD that seemed to fail went through after all
            try:
                await self.queue.submit(turn, tracked=(self.id, record))
            except QueueUnavailable as exc:
                log.warning("turn %s still not queued: %s", turn.turn_id, exc)
                continue
            log.warning("turn %s queued on a later try", turn.turn_id)
            return
        log.error("turn %s not queued; the sweep will queue it", turn.turn_id)

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
        if command in ("/human", "/bot"):
            return await self._handoff_command(channel, msg, command)
        return self._reply_now(channel, msg, texts.UNKNOWN_COMMAND)

    async def _handoff_command(
        self, channel: Channel, msg: InboundMessage, command: str, *, reason: str = "asked"
    ) -> asyncio.Task[None] | None:
        """/human (or a phrase that asks for a person): hand the conversation to the desk.
        /bot: back to the bot. The message is stored (it is part of the conversation) without
        a reply route, so no turn answers it."""
        if self.desk is None:
            return self._reply_now(channel, msg, texts.NOBODY_AVAILABLE)
        try:
            recorded = await self.store.record_user_message(msg)
            if recorded is None:
                return None  # the same event again: answered already
            if command == "/bot":
                back = await self.desk.give_back(recorded.conversation_id)
                return None if back else self._reply_now(channel, msg, texts.NOT_HANDED_OVER)
            said = await self.desk.hand_over(
                recorded.conversation_id, msg, reason=reason, message_id=recorded.message_id
            )
        except StorageUnavailable as exc:
            log.error("cannot hand %s over: %s", msg.dedupe_key, exc)
            return self._reply_now(channel, msg, texts.STORAGE_DOWN)
        return self._reply_now(channel, msg, said)

    async def reset(self, platform: str, conversation_key: str) -> str:
        """Start a new conversation for the chat; returns what to tell the user. Channels whose
        platform has its own command route (Slack's slash commands) call this directly."""
        try:
            found = await self.store.chat_customer(platform, conversation_key)
            if found is not None and found[2] is not None:  # a person has it: that ends too
                if self.desk is not None:
                    await self.desk.give_back(found[0], tell=None)
                else:
                    await self.store.resolve_handoff(found[2])
            await self.store.reset_conversation(platform, conversation_key)
        except StorageUnavailable as exc:
            log.error("cannot reset %s: %s", conversation_key, exc)
            return texts.STORAGE_DOWN
        return texts.RESET

    async def thread_customer(self, platform: str, conversation_key: str) -> str | None:
        """Whose conversation a thread the bot is in is (the customer's user id); None when
        the bot is in no conversation there. When storage cannot tell, raises ``NotAccepted``:
        the platform sends the message again."""
        try:
            found = await self.store.chat_customer(platform, conversation_key)
        except StorageUnavailable as exc:
            log.error("cannot look up conversation %s: %s", conversation_key, exc)
            raise NotAccepted(f"cannot tell whether {conversation_key} is a conversation") from exc
        return None if found is None else (found[1] or "")

    async def person_in_thread(
        self, msg: InboundMessage, show_takeover: Callable[[int], Awaitable[None]]
    ) -> None:
        """Someone other than the customer wrote in the customer's thread: a person from the
        team answering there. They take the conversation over at once (no turn is queued for
        the customer's messages until Resolve), and what they write is stored as an agent's.
        ``show_takeover(handoff id)`` tells the thread, once per takeover."""
        try:
            found = await self.store.chat_customer(msg.platform, msg.conversation_key)
            if found is None:
                return
            conversation_id, _customer, open_id = found
            handoff = await self.store.handoff(open_id) if open_id is not None else None
            opened = False
            if handoff is None:
                handoff, opened = await self.store.open_handoff(
                    conversation_id, reason="agent", route=msg.route(),
                    desk=f"{msg.platform}-thread",
                )  # fmt: skip
            await self.store.record_agent_message(
                handoff, agent_id=msg.user_id, agent_name=msg.user_name, text=msg.text,
                dedupe_key=msg.dedupe_key,
            )  # fmt: skip
        except StorageUnavailable as exc:
            log.error("cannot record a person answering in %s: %s", msg.conversation_key, exc)
            raise NotAccepted(f"message {msg.dedupe_key} not stored: {exc}") from exc
        if opened:
            await show_takeover(handoff.id)

    async def resolve_in_thread(self, handoff_id: int) -> bool:
        """The Resolve of a takeover in a customer's thread: the bot answers there again.
        False when it was resolved already."""
        return await self.store.resolve_handoff(handoff_id) is not None

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

    def _open(
        self,
        channel: Channel,
        msg: InboundMessage,
        turn_id: str,
        *,
        record: dict[str, Any] | None = None,
        posted: list[str] | None = None,
        resumed: bool = False,
        owner: str | None = None,
        track: bool = False,
    ) -> ReplyStream:
        """Open the reply to ``msg`` (turn ``turn_id``) and start delivering it. Each platform
        message the channel posts for it is recorded (in the records of gateway ``owner``, this
        one unless it took the reply over), so that whoever resumes the reply edits those
        messages instead of posting new ones."""
        record = record if record is not None else {"route": msg.route(), "after": "0-0"}
        record["posted"] = list(posted or record.get("posted") or ())
        owner = owner or self.id
        self._owner_of[turn_id] = owner

        async def note_posted(ids: list[str]) -> None:
            record["posted"] = list(ids)
            try:
                await self.queue.track(owner, turn_id, record)
            except Exception as exc:  # a resume would then post again: say so
                log.warning("cannot record the messages of turn %s: %r", turn_id, exc)

        stream = ReplyStream(
            msg,
            turn_id,
            timeout_s=self.settings.reply_timeout_s,
            posted=record["posted"],
            resumed=resumed,
            on_posted=note_posted,
        )
        self._pending[turn_id] = stream
        key = (msg.platform, msg.conversation_key)
        self._generating[key] = turn_id  # for /stop
        # Replies in one chat are shown in order: one waits for the one before it to be shown
        # (they are generated in order anyway), so a 429 on the first cannot put it second.
        before = self._shown_last.get(key)
        recorded = (owner, record) if track else None
        task = self._deliver(channel, stream, after=before, record=recorded)
        self._shown_last[key] = task
        task.add_done_callback(lambda done: self._forget_last(key, done))
        self._deliveries_by_turn[turn_id] = task
        return stream

    def _forget_last(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        if self._shown_last.get(key) is task:
            del self._shown_last[key]

    def _deliver(
        self,
        channel: Channel,
        stream: ReplyStream,
        after: asyncio.Task[None] | None = None,
        record: tuple[str, dict[str, Any]] | None = None,
    ) -> asyncio.Task[None]:
        task = asyncio.create_task(self._run_delivery(channel, stream, after, record))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)
        return task

    async def _run_delivery(
        self,
        channel: Channel,
        stream: ReplyStream,
        after: asyncio.Task[None] | None = None,
        record: tuple[str, dict[str, Any]] | None = None,
    ) -> None:
        finished = False
        try:
            await self._ready.wait()  # a resumed reply waits for its channel to start
            if record is not None:  # recorded before it is shown, and so before it is forgotten
                try:
                    await self.queue.track(record[0], stream.turn_id, record[1])
                except QueueUnavailable as exc:
                    log.warning("cannot record the reply of turn %s: %s", stream.turn_id, exc)
            if after is not None:
                await asyncio.wait([after])  # its outcome is its own task's to log
            await channel.deliver(stream)
            finished = True
        except asyncio.CancelledError:
            raise  # shutting down: the record stays, for whoever resumes the reply
        except Exception:
            log.exception("channel %s failed to deliver turn %s", channel.name, stream.turn_id)
            finished = True
        finally:
            self._pending.pop(stream.turn_id, None)
            self._attempts.pop(stream.turn_id, None)
            self._deliveries_by_turn.pop(stream.turn_id, None)
            key = (stream.inbound.platform, stream.inbound.conversation_key)
            if self._generating.get(key) == stream.turn_id:
                del self._generating[key]
            owner = self._owner_of.pop(stream.turn_id, self.id)
            if finished and stream.turn_id:
                await self._untrack(stream.turn_id, owner)

    async def _untrack(self, turn_id: str, owner: str | None = None) -> None:
        mine = owner in (None, self.id)  # its own reply stream: its cursor moves on
        try:
            await self.queue.untrack(
                owner or self.id, turn_id, cursor=self._cursor if mine else None
            )
        except Exception as exc:  # a restart would show the reply again, in place
            log.warning("cannot forget the delivery of turn %s: %r", turn_id, exc)

    async def _announce(self) -> None:
        """Say every few seconds which channels this gateway runs, so that a revived turn of
        theirs finds it."""
        while True:
            try:
                await self.queue.announce(self.id, self.shared, ANNOUNCE_TTL_S)
            except Exception as exc:  # Redis away: say it again next time
                log.warning("cannot announce gateway %s: %r", self.id, exc)
            await asyncio.sleep(ANNOUNCE_EVERY_S)

    async def _take_over(self) -> None:
        """Every few seconds, take over the replies in progress of a gateway that is gone (it
        stopped, or died and did not come back within its lease) and ran a channel this one
        runs: finish them in the platform messages it posted, then let its id go again."""
        while True:
            await asyncio.sleep(ANNOUNCE_EVERY_S)
            try:
                await self._take_over_once()
            except (QueueUnavailable, AttributeError, TypeError) as exc:
                self._gone.clear()  # seen gone before the outage says nothing about now
                log.warning("cannot look for replies to take over: %r", exc)

    async def _take_over_once(self) -> None:
        """One round of ``_take_over``. A gateway is taken over only once it was seen without
        its lease in the round before too: one whose lease lapsed in a Redis outage renews it
        within a third of the lease once Redis is back, well inside a round, and is left be."""
        others: set[str] = set()
        for platform in self.shared:
            others |= await self.queue.gateway_ids(platform)
        gone_before, self._gone = self._gone, set()
        for other in sorted(others - {self.id} - set(self._fostered)):
            records = await self.queue.tracked(other)
            mine = {
                turn_id: record
                for turn_id, record in records.items()
                if (record.get("route") or {}).get("platform") in self.shared
            }
            if not records:  # gone for good, or alive with nothing in progress
                await self.queue.forget_gateway(other, self.shared)
                continue
            if not mine or await self.queue.gateway_alive(other):
                continue
            if other not in gone_before:
                self._gone.add(other)  # gone, or back soon: look again next round
                continue
            if await self.queue.hold_gateway(other, self._owner, LEASE_MS):
                task = asyncio.create_task(self._foster(other, mine))
                self._fostered[other] = task
                task.add_done_callback(functools.partial(self._unfoster, other))

    def _unfoster(self, other: str, _task: asyncio.Task[None]) -> None:
        self._fostered.pop(other, None)

    async def _foster(self, other: str, records: dict[str, dict[str, Any]]) -> None:
        """Finish gateway ``other``'s replies in progress (its lease is held here meanwhile)."""
        seen = await self.queue.cursor(other) or "0-0"  # what ``other`` read before it went
        start = await self._reopen(records, owner=other)
        tasks = [self._deliveries_by_turn[t] for t in records if t in self._deliveries_by_turn]
        read_to = seen

        async def read() -> None:
            # feeds the replies taken over; a re-queued turn sent to ``other`` after it went
            # (a worker takes a held lease for a live gateway) is opened here, under this id
            nonlocal read_to
            begin = start if start and _after(seen, start) else seen
            before = begin
            async for entry_id, delta in self.queue.replies(other, begin):
                opened = delta.turn_id not in self._pending
                self._route(delta, replayed=not _after(entry_id, seen), owner=other, after=before)
                if opened and delta.turn_id in self._deliveries_by_turn:
                    tasks.append(self._deliveries_by_turn[delta.turn_id])
                    more.set()
                before = entry_id
                if _after(entry_id, read_to):
                    read_to = entry_id

        async def keep_lease() -> None:
            while True:
                await asyncio.sleep(LEASE_MS / 3000)
                if not await self.queue.hold_gateway(other, self._owner, LEASE_MS):
                    return

        more = asyncio.Event()  # read() opened another reply
        helpers = [asyncio.create_task(read()), asyncio.create_task(keep_lease())]
        try:
            while not all(task.done() for task in tasks):
                more.clear()
                waiting = [asyncio.ensure_future(more.wait())]
                await asyncio.wait(
                    [*(t for t in tasks if not t.done()), *waiting],
                    return_when=asyncio.FIRST_COMPLETED,
                )
                waiting[0].cancel()
        finally:
            await cancel_and_wait(helpers)
            try:
                if read_to != seen:  # so that ``other``, back, does not show these again
                    await self.queue.save_cursor(other, read_to)
                await self.queue.let_gateway_go(other, self._owner)
            except Exception as exc:  # it lapses by itself
                log.warning("cannot release gateway %s: %r", other, exc)

    async def _pump_replies(self) -> None:
        """Route each delta of this gateway's reply stream to its reply. Entries an earlier
        process read already (before ``_replayed_to``) are read again only for the replies
        being resumed; none of them opens a reply."""
        assert self._cursor is not None, "start() resumes first"
        async for entry_id, delta in self.queue.replies(self.id, self._cursor):
            self._route(delta, replayed=not _after(entry_id, self._replayed_to))
            self._cursor = entry_id  # after routing: a reply opened here starts before it

    def _route(
        self,
        delta: ReplyDelta,
        *,
        replayed: bool = False,
        owner: str | None = None,
        after: str | None = None,
    ) -> None:
        """Feed ``delta`` to its reply, opening a revived turn's (``_adopt``) unless the entry
        was read before. ``owner`` and ``after``: the gateway whose reply stream it came from,
        and the entry before it there, when that is not this gateway's own."""
        stream = self._pending.get(delta.turn_id)
        if stream is None and not replayed:
            stream = self._adopt(delta, owner=owner, after=after)
        if stream is None:
            log.debug("delta for unknown or finished turn %s ignored", delta.turn_id)
            return
        stream.feed(delta)
        latest = max(self._attempts.get(delta.turn_id, 0), delta.attempt)
        self._attempts[delta.turn_id] = latest
        # Only the newest attempt's end ends the reply: a slow worker that finishes after
        # its turn was taken over ends nothing (ReplyStream shows none of its deltas)
        if delta.done and delta.attempt == latest:
            del self._pending[delta.turn_id]
            del self._attempts[delta.turn_id]
            revival = self._revivals.pop(delta.turn_id, 0)
            # a reply shown whole is never opened again; one that ended in an apology (gave up,
            # timed out) is, by a later revival of its turn
            self._finished[delta.turn_id] = FINISHED_OK if delta.error is None else revival
            self._count_failure(stream.inbound, failed=delta.error is not None)
            if len(self._finished) > FINISHED_KEPT:
                self._finished.popitem(last=False)

    def _count_failure(self, msg: InboundMessage, *, failed: bool) -> None:
        """Failed answers in a row, per chat (``FRONTDESK_HANDOFF_AFTER_FAILURES``)."""
        key = (msg.platform, msg.conversation_key)
        if not failed:
            self._failures.pop(key, None)
            return
        self._failures[key] = self._failures.pop(key, 0) + 1
        if len(self._failures) > FINISHED_KEPT:
            self._failures.popitem(last=False)

    def _adopt(
        self, delta: ReplyDelta, *, owner: str | None = None, after: str | None = None
    ) -> ReplyStream | None:
        """Open the reply of a revived turn from its route: one this gateway may not have taken,
        or whose first reply (the apology of a turn that gave up) it has shown already, or a
        swept message of a channel only this gateway can post to (said to be resumed: the
        console printed part of it, or nothing, before the process ended)."""
        if delta.route is None:
            return None
        try:
            revival = int(delta.route.get("revived") or 0)
            msg = InboundMessage.from_route(delta.route)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("turn %s: unusable route (%r)", delta.turn_id, exc)
            return None
        if self._finished.get(delta.turn_id, -1) >= revival:
            return None  # a late copy of a reply already shown, or one shown whole
        channel = self._by_name.get(msg.platform)
        pinned = delta.route.get("gateway")  # a swept turn only its own gateway can show
        if channel is None or (channel.name not in self.shared and pinned != self.id):
            return None
        log.info("opening the reply of turn %s (revival %d)", delta.turn_id, revival)
        record = {"route": msg.route(), "after": after or self._cursor or "0-0", "posted": []}
        stream = self._open(
            channel, msg, delta.turn_id, record=record, track=True, resumed=bool(pinned),
            owner=owner,
        )  # fmt: skip
        self._revivals[delta.turn_id] = revival
        return stream
