"""The handoff desk, platform-blind: a customer handed to a person, the person's answers relayed
back, and the conversation given back to the bot.

A conversation is the bot's, ``waiting`` (handed to the desk, nobody has answered yet) or
``human`` (a person claimed it or wrote to the customer); the state is in SQL
(``storage/desk.py``), so it survives restarts, and the gateway learns it in the statement that
stores each customer message: while a person has the conversation, no turn is queued and the
customer's messages go to the desk's thread instead.

The desk is a place on one platform (``FRONTDESK_DESK=slack:<channel id>``), for customers from
any channel: a Telegram customer can be answered from Slack. Several places
(``slack:C1,slack:C2``) share the handoffs out, a conversation to the same one each time: one
Slack channel takes about one post a second, which a busy desk's customers outrun. The platform's
part, the thread per handoff and its buttons, is its channel's (``DeskSide``); this module
decides what goes where. An agent's answer reaches the customer through the customer's own
channel.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from frontdesk import metrics, texts
from frontdesk.errors import ConfigError, FrontdeskError, StorageUnavailable
from frontdesk.storage import HandoffRecord, HandoffState, Store
from frontdesk.wire import InboundMessage

from .hours import DeskHours

if TYPE_CHECKING:
    from .gateway import Gateway

log = logging.getLogger(__name__)
SUMMARY_LAST = 4  # the customer's last messages shown on a handoff's card
SUMMARY_CHARS = 300  # of each message shown
# An agent's answer, or button, in a card's thread before the gateway that posted the card has
# stored its thread: looked for again this long, every THREAD_LOOK_EVERY_S, while a handoff at
# the desk still awaits its thread (one opened within THREAD_OPENING_S)
THREAD_WAIT_S = 2.0  # within the 3 s Slack gives an event's answer
THREAD_LOOK_EVERY_S = 0.1
THREAD_OPENING_S = 60.0


@dataclass(frozen=True, slots=True)
class HandoffCard:
    """What the desk shows of a handoff: the thread's first message, and its buttons."""

    handoff_id: int
    conversation_id: int
    platform: str  # the customer's
    customer: str
    reason: str
    first_question: str
    last_messages: list[tuple[str, str]]  # (role, text), oldest first
    state: str = "waiting"
    agent: str | None = None  # who has it, once claimed


class DeskSide(Protocol):
    """A channel that can be the desk: it opens a thread per handoff where agents see the
    customer's messages and answer, and shows the handoff's state on the thread's first
    message. It hands what agents do there to ``Desk``: ``agent_said``, ``claim``,
    ``resolve``."""

    name: str

    async def open_desk_thread(self, place: str, card: HandoffCard) -> str: ...
    async def post_to_desk_thread(self, place: str, thread: str, text: str) -> None: ...
    async def show_handoff(self, place: str, thread: str, card: HandoffCard) -> None: ...


class Desk:
    """Hands customers to the desk places in ``desks`` (``settings.desks``) and relays between
    them."""

    def __init__(self, gateway: Gateway, store: Store, desks: list[str]) -> None:
        self.gateway, self.store = gateway, store
        self.desks = desks
        self._sides: dict[str, DeskSide] = {}
        for desk in desks:
            platform = desk.partition(":")[0]
            found = gateway.channel(platform)
            if found is None or not hasattr(found, "open_desk_thread"):
                raise ConfigError(f"FRONTDESK_DESK={desk}: this gateway runs no {platform} "
                                  "channel to hold the desk")  # fmt: skip
            self._sides[platform] = found  # type: ignore[assignment]
        settings = gateway.settings
        self.hours = (
            DeskHours.parse(settings.desk_hours, settings.desk_timezone)
            if settings.desk_hours
            else None
        )

    def is_desk(self, platform: str, place: str) -> bool:
        return f"{platform}:{place}" in self.desks

    def _at(self, desk: str) -> tuple[DeskSide, str] | None:
        """The channel that holds ``desk``, and the place there; None for a handoff that is not
        at one of ``desks`` (a person answering in the customer's own thread, or a place
        taken out of the setting since)."""
        if desk not in self.desks:
            return None
        platform, _, place = desk.partition(":")
        return self._sides[platform], place

    # -- the customer's side -------------------------------------------------------------------

    async def hand_over(
        self, conversation_id: int, msg: InboundMessage, *, reason: str, message_id: int
    ) -> str:
        """Hand the conversation to the desk (once; asking again only shows the message at the
        desk) and say what to tell the customer. ``message_id``: the stored message that asked;
        what the customer writes after it, while the desk's thread is being opened, is shown
        there once it is."""
        route = msg.route()
        desk = self.desks[conversation_id % len(self.desks)]  # the same place each time
        try:
            handoff, opened = await self.store.open_handoff(
                conversation_id, reason=reason, route=route, desk=desk
            )
        except StorageUnavailable as exc:
            log.error("cannot hand conversation %d over: %s", conversation_id, exc)
            return texts.STORAGE_DOWN
        if not opened:
            await self.customer_said(conversation_id, msg)
            return texts.HANDOFF_ALREADY
        try:
            card = await self._card(handoff, msg)
            at = self._at(desk)
            assert at is not None, "__init__ found a channel for every place"
            side, place = at
            thread = await side.open_desk_thread(place, card)
            await self.store.set_desk_thread(handoff.id, thread)
            handoff = dataclasses.replace(handoff, desk_thread=thread)
        except (FrontdeskError, OSError) as exc:
            log.error("cannot post handoff %d to the desk %s: %s", handoff.id, handoff.desk, exc)
            await self.store.resolve_handoff(handoff.id)
            return texts.NOBODY_AVAILABLE
        # what the customer wrote while the thread was being opened (the first post waits its
        # turn in the desk channel's pace), found no thread to go to: it goes now
        _conv, stored = await self.store.conversation(conversation_id)
        for earlier in stored:
            if earlier.id > message_id and earlier.role == "user":
                who = earlier.user_name or earlier.user_id or msg.user_id
                await self._post(handoff, f"{who}: {earlier.content}")
        log.info("conversation %d handed to the desk (%s)", conversation_id, reason)
        metrics.HANDOFFS.labels(msg.platform, reason).inc()
        if self.hours is not None and self.hours.opened_at(datetime.now(UTC)) is None:
            return texts.handed_over_after_hours(self.hours.text)
        return texts.HANDED_OVER

    async def customer_said(self, conversation_id: int, msg: InboundMessage) -> None:
        """A customer's message while a person has the conversation: into the desk's thread."""
        handoff = await self.store.handoff_of(conversation_id)
        if handoff is None or self._at(handoff.desk) is None:
            return  # e.g. a person answering in the customer's own thread: they see it there
        if handoff.desk_thread is None:
            return  # the thread is being opened: hand_over shows the message once it is
        await self._post(handoff, f"{msg.user_name or msg.user_id}: {msg.text}")

    async def _post(self, handoff: HandoffRecord, text: str) -> None:
        at = self._at(handoff.desk)
        if at is None or handoff.desk_thread is None:
            return
        side, place = at
        try:
            await side.post_to_desk_thread(place, handoff.desk_thread, text)
        except (FrontdeskError, OSError) as exc:  # it is stored: the logs still show it
            log.error("handoff %d: cannot show a customer message at the desk: %s", handoff.id, exc)

    async def give_back(
        self, conversation_id: int, *, tell: str | None = texts.BOT_IS_BACK
    ) -> bool:
        """The customer asks for the bot again (/bot), or starts over (/reset): the handoff
        ends, and the customer is told ``tell``. False when the conversation was the bot's."""
        handoff = await self.store.handoff_of(conversation_id)
        if handoff is None:
            return False
        await self._resolve(handoff, by="the customer", tell=tell)
        return True

    # -- the desk's side -----------------------------------------------------------------------

    async def agent_said(
        self,
        desk: str,
        thread: str,
        *,
        agent_id: str,
        agent_name: str | None,
        text: str,
        event_id: str,
    ) -> str | None:
        """An agent's message in a handoff's thread at ``desk`` (one of ``desks``): stored (role
        ``agent``) and sent to the customer, and the handoff is a person's from now on. Returns
        what to tell the agent when it cannot go (the handoff is over), else None."""
        handoff = await self._by_thread(desk, thread)
        if handoff is None:
            return None  # a thread that is no handoff's: not ours to answer
        if not handoff.open:
            return texts.HANDOFF_OVER
        stored = await self.store.record_agent_message(
            handoff, agent_id=agent_id, agent_name=agent_name, text=text,
            dedupe_key=f"{desk}:{event_id}",
        )  # fmt: skip
        if stored is None:
            return None  # the same event again: sent already
        await self._to_customer(handoff, f"{agent_name or 'Support'}: {text}")
        if handoff.state == "waiting":
            await self._show(handoff, state="human", agent=agent_name or agent_id)
        return None

    async def claim(
        self, desk: str, thread: str, agent_id: str, agent_name: str | None
    ) -> str | None:
        """An agent takes the handoff (the Claim button). What to tell the agent, if anything."""
        handoff = await self._by_thread(desk, thread)
        if handoff is None:
            return None
        if not await self.store.claim_handoff(handoff.id, agent_id):
            return texts.HANDOFF_OVER
        claimed = await self.store.handoff(handoff.id)  # the first to claim keeps it
        holder = claimed.agent_id if claimed is not None else None
        await self._show(handoff, state="human",
                         agent=agent_name if holder in (None, agent_id) else holder)  # fmt: skip
        return None

    async def resolve(self, desk: str, thread: str, agent_id: str) -> str | None:
        """The handoff ends (the Resolve button): the bot has the conversation again."""
        handoff = await self._by_thread(desk, thread)
        if handoff is None:
            return None
        if not handoff.open:
            return texts.HANDOFF_OVER
        await self._resolve(handoff, by=agent_id)
        return None

    async def _by_thread(self, desk: str, thread: str) -> HandoffRecord | None:
        """The handoff whose thread at ``desk`` this is. A card's thread is stored just after
        the card is posted (its id comes with the post): an agent quick enough to answer in that
        moment, maybe on another gateway, finds it once it is stored. Other threads are looked
        up once, unless a card at the desk is being posted."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + THREAD_WAIT_S
        while True:
            handoff = await self.store.handoff_by_thread(desk, thread)
            if handoff is not None or loop.time() >= deadline:
                return handoff
            since = datetime.now(UTC) - timedelta(seconds=THREAD_OPENING_S)
            if not await self.store.threads_opening(desk, since):
                return None
            await asyncio.sleep(THREAD_LOOK_EVERY_S)

    # -- timeouts ------------------------------------------------------------------------------

    async def watch(self) -> None:
        """Give the bot back what has waited too long: a handoff nobody claimed within
        ``FRONTDESK_DESK_CLAIM_TIMEOUT_S`` (the customer is told nobody could take it), and one a
        person has, idle for ``FRONTDESK_HANDOFF_IDLE_S``. Runs on every gateway with a desk;
        each handoff is resolved once, so its customer is told once."""
        settings = self.gateway.settings
        shortest = min(settings.desk_claim_timeout_s, settings.handoff_idle_s)
        every = max(0.2, min(30.0, shortest / 4))
        while True:
            await asyncio.sleep(every)
            now = datetime.now(UTC)
            try:
                overdue = await self.store.overdue_handoffs(
                    self.desks, unclaimed_before=self._unclaimed_before(now),
                    idle_before=now - timedelta(seconds=settings.handoff_idle_s),
                )  # fmt: skip
            except StorageUnavailable as exc:  # looked at again in a while
                log.warning("cannot look for overdue handoffs: %s", exc)
                continue
            for handoff in overdue:
                unclaimed = handoff.state == HandoffState.WAITING
                await self._resolve(
                    handoff, by="nobody (timeout)" if unclaimed else "idle",
                    tell=texts.NOBODY_CLAIMED if unclaimed else texts.BOT_IS_BACK,
                )  # fmt: skip

    def _unclaimed_before(self, now: datetime) -> datetime:
        """Waiting handoffs opened before this have waited out the claim timeout. Outside desk
        hours none has; inside them, the time counts from the desk's opening."""
        cutoff = now - timedelta(seconds=self.gateway.settings.desk_claim_timeout_s)
        if self.hours is None:
            return cutoff
        opened = self.hours.opened_at(now)
        if opened is None or cutoff < opened:
            return datetime.min.replace(tzinfo=UTC)  # none: closed, or not open long enough
        return cutoff

    # -- helpers -------------------------------------------------------------------------------

    async def _resolve(
        self, handoff: HandoffRecord, *, by: str, tell: str | None = texts.BOT_IS_BACK
    ) -> None:
        if await self.store.resolve_handoff(handoff.id) is None:
            return  # resolved by someone else meanwhile
        log.info("handoff %d resolved by %s", handoff.id, by)
        if tell is not None:
            await self._to_customer(handoff, tell)
        await self._show(handoff, state="resolved", agent=handoff.agent_id)

    async def _to_customer(self, handoff: HandoffRecord, text: str) -> None:
        msg = InboundMessage.from_route(handoff.route)
        channel = self.gateway.channel(msg.platform)
        if channel is None:
            log.error("handoff %d: this gateway runs no %s channel for the customer",
                      handoff.id, msg.platform)  # fmt: skip
            return
        await self.gateway.deliver_now(channel, msg, text)

    async def _show(self, handoff: HandoffRecord, *, state: str, agent: str | None) -> None:
        at = self._at(handoff.desk)
        if at is None or handoff.desk_thread is None:
            return
        side, place = at
        card = await self._card(handoff, InboundMessage.from_route(handoff.route))
        card = dataclasses.replace(card, state=state, agent=agent)
        try:
            await side.show_handoff(place, handoff.desk_thread, card)
        except (FrontdeskError, OSError) as exc:
            log.warning("cannot show handoff %d's state: %s", handoff.id, exc)

    async def _card(self, handoff: HandoffRecord, msg: InboundMessage) -> HandoffCard:
        _conv, messages = await self.store.conversation(handoff.conversation_id)
        said = [(m.role, m.content[:SUMMARY_CHARS]) for m in messages if m.role != "agent"]
        first = next((text for role, text in said if role == "user"), "")
        return HandoffCard(
            handoff_id=handoff.id, conversation_id=handoff.conversation_id,
            platform=msg.platform, customer=msg.user_name or msg.user_id,
            reason=handoff.reason, first_question=first, last_messages=said[-SUMMARY_LAST:],
            state=handoff.state, agent=handoff.agent_id,
        )  # fmt: skip


def is_handoff_request(text: str, phrases: list[str]) -> bool:
    """Whether the customer asks for a person in so many words: the message is "human" (as
    the bot's offer of a person says), or holds one of ``phrases``."""
    said = " ".join(text.lower().split())
    if said.strip(" .!?\"'") == "human":
        return True
    return any(phrase.lower() in said for phrase in phrases if phrase.strip())
