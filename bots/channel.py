"""The channel protocol, and ``ReplyStream``, the one reply path every channel delivers from.

A channel translates one platform: its events into ``InboundMessage``s handed to the gateway, and a
``ReplyStream`` back into messages on the platform. Everything platform-specific (length limits,
markup, rate limits) stays inside the channel.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from frontdesk import texts
from frontdesk.wire import InboundMessage, ReplyDelta

if TYPE_CHECKING:
    from .gateway import Gateway


class ReplyStream:
    """The deltas of one reply, in order, ending with one whose ``done`` is set. A reply that goes
    quiet for ``timeout_s`` ends with a polite time-out error.

    When a later attempt at the turn starts (a worker took it over after the first one died), the
    earlier attempt's deltas stop counting: the first delta of the new one comes with ``restart``
    set, and a channel shows the reply from that delta on, in place of what it showed.

    A reply can outlive the gateway process showing it. The channel reports the platform messages
    it posts for the reply (``note_posted``); a reply ``resumed`` after a restart, or by another
    gateway, starts from the first delta again with those messages in ``posted``, and the
    channel edits them to the whole text instead of posting new ones."""

    def __init__(
        self,
        inbound: InboundMessage,
        turn_id: str,
        *,
        timeout_s: float = 600.0,
        posted: list[str] | None = None,
        resumed: bool = False,
        on_posted: Callable[[list[str]], Awaitable[None]] | None = None,
    ) -> None:
        self.inbound = inbound
        self.turn_id = turn_id
        self.posted = list(posted or ())
        self.resumed = resumed
        self._on_posted = on_posted
        self._timeout_s = timeout_s
        self._deltas: asyncio.Queue[ReplyDelta] = asyncio.Queue()
        self._next_seq = 0
        self._attempt = 0

    @classmethod
    def immediate(cls, inbound: InboundMessage, text: str) -> ReplyStream:
        """A complete reply the gateway gives itself (command answers, polite refusals)."""
        stream = cls(inbound, turn_id="")
        stream.feed(ReplyDelta("", 0, text, done=True))
        return stream

    def feed(self, delta: ReplyDelta) -> None:
        self._deltas.put_nowait(delta)

    async def note_posted(self, ids: list[str]) -> None:
        """The platform messages that show this reply now, in order (after each post or
        deletion): recorded, so that a resumed reply edits them."""
        self.posted = list(ids)
        if self._on_posted is not None:
            await self._on_posted(self.posted)

    async def __aiter__(self) -> AsyncIterator[ReplyDelta]:
        while True:
            try:
                # a timeout around the wait, not ``wait_for``: on Python 3.11 that wraps the
                # wait in a task of its own (one more task for every delta) and can lose a cancel
                async with asyncio.timeout(self._timeout_s):
                    delta = await self._deltas.get()
            except TimeoutError:
                yield ReplyDelta(self.turn_id, self._next_seq, "", done=True, error=texts.TIMED_OUT)
                return
            if delta.attempt < self._attempt:
                continue  # from a worker that has since been replaced
            if delta.attempt > self._attempt:
                if self._next_seq:  # something of the earlier attempt was passed on
                    delta = dataclasses.replace(delta, restart=True)
                self._attempt, self._next_seq = delta.attempt, 0
            if delta.seq < self._next_seq:
                continue  # sent twice
            self._next_seq = delta.seq + 1
            yield delta
            if delta.done:
                return


class ReplyText:
    """A reply's text as its stream gives it, for a channel that shows the reply while it grows.

    ``read`` follows the stream: each delta adds to the text (a restarted attempt's first delta
    replaces it) and sets ``changed``; the last one is kept in ``last``, its error (an apology)
    is appended to the text, and ``finished`` is set. ``changed`` is set too when the stream
    ends, however it ends, so that a channel waiting on it always wakes."""

    def __init__(self) -> None:
        self.text = ""
        self.last: ReplyDelta | None = None  # the reply's last delta, once it came
        self.changed = asyncio.Event()
        self.finished = asyncio.Event()

    @property
    def error(self) -> bool:
        """The reply ended in an apology (its text ends with it)."""
        return self.last is not None and bool(self.last.error)

    @property
    def joined(self) -> bool:
        """A later message's reply answers for this one (``FRONTDESK_BURST_MS``)."""
        return self.last is not None and self.last.joined

    async def read(self, reply: ReplyStream) -> None:
        try:
            async for delta in reply:
                self.text = delta.text if delta.restart else self.text + delta.text
                if delta.done:
                    if delta.error:
                        body = self.text.rstrip()
                        self.text = f"{body}\n\n{delta.error}" if body else delta.error
                    self.last = delta
                    self.finished.set()
                self.changed.set()
        finally:
            self.changed.set()


class Channel(Protocol):
    """A platform adapter. ``start`` connects it to the gateway (which it calls ``handle`` on for
    each message); ``deliver`` shows one reply; ``stop`` disconnects.

    A channel may also set ``replies_from_any_gateway = True`` when a reply needs nothing but
    what ``InboundMessage.route`` holds (a chat id, a thread), so that any gateway running it can
    deliver a turn another gateway took. Without it, only its own gateway replies.

    A channel whose users send messages in quick bursts (a chat platform, not a console that
    waits for each reply) sets ``bursts = True``: its turns wait ``FRONTDESK_BURST_MS``, and a
    reply that a later message's turn answered for ends with a ``joined`` delta, showing nothing.

    A channel whose platform delivers a message again until it is acked sets ``redelivers =
    True``: when the gateway cannot store a message, ``handle`` raises ``NotAccepted`` instead of
    apologising, and the channel leaves the message unacked.

    A channel whose platform shows a reply's progress at most every so often (its edits are
    rate-limited) sets ``shows_every_s`` to that interval: the worker then sends the reply's
    deltas no more often (``FRONTDESK_STREAM_FLUSH_MS`` when that is slower), rather than ten a
    second for the channel to merge. Its first text still goes at once, and its last with the
    stored reply."""

    name: str

    async def start(self, gateway: Gateway) -> None: ...
    async def stop(self) -> None: ...
    async def deliver(self, reply: ReplyStream) -> None: ...
