"""How the Slack channel shows a reply as it streams: a placeholder, then ``chat.update``s of the
growing text, within one app-wide budget of updates, converted from Markdown to mrkdwn and split
at Slack's length limit. See the package's docstring for the rules."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from frontdesk import texts
from frontdesk.errors import QueueUnavailable

from ..channel import ReplyStream, ReplyText
from ..text import split_text
from .mrkdwn import mrkdwn_len, to_mrkdwn

if TYPE_CHECKING:
    from frontdesk.engine.queue import TurnQueue

    from .channel import SlackChannel

LIMIT = 4_000  # Slack truncates the display of longer text
SECTION_LIMIT = 3_000  # of a section block's text
RATE_UP, RATE_DOWN = "frontdesk_rate_up", "frontdesk_rate_down"


def rated_blocks(text: str, question_id: int) -> list[dict[str, Any]]:
    """An answer's last message as blocks: its text in sections, then 👍 and 👎 buttons that
    name the message it answers."""
    sections = [
        {"type": "section", "text": {"type": "mrkdwn", "text": piece}}
        for piece in split_text(text, SECTION_LIMIT, mrkdwn_len)
        if piece.strip()
    ]
    buttons = [
        {"type": "button", "action_id": action, "value": str(question_id),
         "text": {"type": "plain_text", "text": label, "emoji": True}}
        for action, label in ((RATE_UP, "👍"), (RATE_DOWN, "👎"))
    ]  # fmt: skip
    return [*sections, {"type": "actions", "elements": buttons}]


PLACEHOLDER = "_Thinking…_"
PLACEHOLDER_AFTER_S = 0.3  # a reply complete by then is posted whole, with no placeholder
WINDOW_S = 60.5  # chat.update's per-minute budget, with a margin for clock skew


class UpdateBudget:
    """The app-wide allowance of chat.update calls (Tier 3: ``per_minute`` in any minute).

    Final updates (the text a user keeps) come first: an interim update is granted only while the
    minute's remaining room covers one final update for every reply still streaming. A final
    update waits for room. A 429 holds every update for its Retry-After.
    """

    def __init__(self, per_minute: int) -> None:
        self.limit = per_minute
        self.streaming = 0  # replies that still owe a final update (opened, not closed)
        self._sent: deque[list[float]] = deque()  # [time] of each update in the window
        self._held_until = 0.0

    def _room(self, now: float) -> int:
        while self._sent and now - self._sent[0][0] >= WINDOW_S:
            self._sent.popleft()
        return self.limit - len(self._sent)

    def opened(self) -> None:
        """A reply began streaming: it owes a final update."""
        self.streaming += 1

    def closed(self) -> None:
        self.streaming -= 1

    def interim_room(self) -> bool:
        """Whether an interim update would be granted now."""
        now = time.monotonic()
        return now >= self._held_until and self._room(now) > self.streaming

    async def try_interim(self) -> list[float] | None:
        """A slot for an interim update, or None. The caller stamps the slot when answered."""
        if not self.interim_room():
            return None
        slot = [time.monotonic()]
        self._sent.append(slot)
        return slot

    async def final(self) -> list[float]:
        """A slot for a final update, waiting as long as it takes."""
        while True:
            now = time.monotonic()
            wait = self._held_until - now
            if wait <= 0:
                if self._room(now) > 0:
                    slot = [now]
                    self._sent.append(slot)
                    return slot
                wait = self._sent[0][0] + WINDOW_S - now
            await asyncio.sleep(max(wait, 0.01))

    async def hold(self, seconds: float) -> None:
        self._held_until = max(self._held_until, time.monotonic() + seconds)


class SharedUpdateBudget(UpdateBudget):
    """The same budget kept in Redis (``TurnQueue.budget``) for every gateway of a workspace:
    each call is granted there, in one round trip, and the finals owed are every gateway's.
    With Redis out of reach, this gateway's own count decides, as with one gateway."""

    REFUSED_FOR_S = 0.25  # after a refused interim update, none is asked for this long

    def __init__(self, per_minute: int, queue: TurnQueue, place: str, owner: str) -> None:
        super().__init__(per_minute)
        self.queue, self.place, self.owner = queue, place, owner
        self._refused_until = 0.0
        self._telling: asyncio.Task[None] | None = None  # saying what this gateway owes
        self._tell_again = False

    def interim_room(self) -> bool:
        now = time.monotonic()
        return now >= self._held_until and now >= self._refused_until

    async def _ask(self, kind: str) -> float | None:
        return await self.queue.budget(
            self.place, self.limit, WINDOW_S, self.owner, self.streaming, kind=kind
        )

    def opened(self) -> None:
        super().opened()
        self._tell()

    def closed(self) -> None:
        super().closed()
        self._tell()

    def _tell(self) -> None:
        """Say what this gateway owes now, before its first update asks: the other gateways'
        interim updates must leave room for its replies' finals too."""
        if self._telling is None or self._telling.done():
            self._telling = asyncio.create_task(self._say_owed())
        else:
            self._tell_again = True

    async def _say_owed(self) -> None:
        while True:
            self._tell_again = False
            with contextlib.suppress(QueueUnavailable):
                await self._ask("owed")
            if not self._tell_again:
                return

    async def try_interim(self) -> list[float] | None:
        if not self.interim_room():
            return None
        try:
            wait = await self._ask("interim")
        except QueueUnavailable:
            return await super().try_interim()
        if wait is None:
            self._refused_until = time.monotonic() + self.REFUSED_FOR_S
            return None
        return [time.monotonic()]

    async def final(self) -> list[float]:
        while True:
            try:
                wait = await self._ask("final")
            except QueueUnavailable:
                return await super().final()
            if not wait:
                return [time.monotonic()]
            await asyncio.sleep(wait)

    async def hold(self, seconds: float) -> None:
        await super().hold(seconds)
        with contextlib.suppress(QueueUnavailable):
            await self.queue.hold_budget(self.place, seconds, WINDOW_S)


@dataclass
class _Shown:
    """One message of a reply on Slack: its ts, the mrkdwn it shows, when it was last changed
    (posted or updated), and when it was last updated (0: never)."""

    ts: str
    text: str
    at: float = field(default_factory=time.monotonic)
    updated_at: float = 0.0


class LiveReply:
    """One reply shown as it streams: a placeholder, then updates with the growing text."""

    def __init__(self, channel: SlackChannel, where: str, thread_ts: str) -> None:
        self.slack = channel
        self.where = where
        self.thread_ts = thread_ts
        self.interval = channel.settings.slack_edit_interval
        self.shown: list[_Shown] = []
        self.reply: ReplyStream | None = None  # the one run() shows
        self.latest = ReplyText()

    async def run(self, reply: ReplyStream) -> None:
        self.reply = reply
        # a resumed reply: the messages posted for it before are updated to the whole text
        self.shown = [_Shown(ts, "", at=0.0) for ts in reply.posted]
        budget = self.slack.budget
        budget.opened()
        latest = self.latest
        reader = asyncio.create_task(latest.read(reply))
        try:
            if not self.shown:  # a turn starts FRONTDESK_BURST_MS after its message
                await self._wait(PLACEHOLDER_AFTER_S + self.slack.settings.burst_ms / 1000)
            while True:
                final = latest.finished.is_set()
                latest.changed.clear()
                if final and latest.joined:  # a later message's reply answers this one
                    for shown in self.shown:
                        await self.slack.delete(self.where, shown.ts)
                    return
                await self._show(final)
                if final:
                    return
                await self._wait(self.interval)
                await latest.changed.wait()
        finally:
            budget.closed()
            reader.cancel()

    async def _note_posted(self) -> None:
        if self.reply is not None:
            await self.reply.note_posted([m.ts for m in self.shown])

    async def _wait(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if the reply finishes."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.latest.finished.wait(), seconds)

    async def _show(self, final: bool) -> None:
        """Bring Slack up to the text: post new parts, update changed ones. Parts before the
        last are complete, so their updates are final ones; the last part's is interim until
        the reply ends."""
        if not final and self.shown and len(self.latest.text) < LIMIT * 0.9:
            # Only the one message can change: skip the conversion when it cannot be updated
            if time.monotonic() - self.shown[-1].at < self.interval:
                return
            if not self.slack.budget.interim_room():
                return
        if not final and self.shown and not self.latest.text.strip():
            return  # a resumed reply keeps what it showed until its text comes again
        text = self.latest.text if self.latest.text.strip() or not final else texts.EMPTY_REPLY
        if text.strip():
            parts = [to_mrkdwn(p) for p in split_text(text, LIMIT, mrkdwn_len) if p.strip()]
        else:
            parts = [PLACEHOLDER]
        if final:
            extras = self.shown[len(parts) :]  # the reply started over and came out shorter
            for extra in extras:
                await self.slack.delete(self.where, extra.ts)
            del self.shown[len(parts) :]
            if extras:
                await self._note_posted()
        # the last message of an answer gets 👍 and 👎 with its final text: no update is spent
        # on them while the answer streams
        rated = (
            final
            and bool(self.latest.text.strip())
            and not self.latest.error
            and (self.reply is not None and self.reply.turn_id.startswith("m"))
        )
        for index, part in enumerate(parts):
            blocks = None
            if rated and index == len(parts) - 1:
                assert self.reply is not None
                blocks = rated_blocks(part, int(self.reply.turn_id[1:]))
            if index >= len(self.shown):
                ts = await self.slack.post(self.where, self.thread_ts, part, blocks=blocks)
                self.shown.append(_Shown(ts, part))
                await self._note_posted()
                continue
            shown = self.shown[index]
            if part == shown.text and blocks is None:
                continue
            complete = final or index < len(parts) - 1
            if complete:
                slot = await self.slack.budget.final()
            elif time.monotonic() - shown.at < self.interval:
                continue
            else:
                interim = await self.slack.budget.try_interim()
                if interim is None:
                    continue  # the budget is kept for final updates
                slot = interim
            # one update a second per message; a complete part's first update need not wait
            # for its post (an interim one did, above: it would spend the budget on little)
            gap = shown.updated_at + self.interval - time.monotonic()
            if gap > 0:
                await asyncio.sleep(gap)
            if await self.slack.update(self.where, shown.ts, part, slot, blocks=blocks):
                shown.text = part
            shown.at = shown.updated_at = time.monotonic()
