"""The Slack channel's calls to the Web API: ``chat.postMessage``, ``chat.update`` and
``chat.delete``, the only code that sends to Slack. Posts to one channel go one at a time, a second
apart, counted from Slack's answer to the one before (and, with several gateways, a second
apart among all of them, 1.1 s between two gateways' posts, through Redis); updates take slots of the app-wide
``UpdateBudget``; a 429 is waited out for its ``Retry-After`` and the call tried again."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from frontdesk import metrics
from frontdesk.errors import FrontdeskError, QueueUnavailable

from .reply import UpdateBudget

log = logging.getLogger(__name__)
T = TypeVar("T")

POST_GAP_S = 1.0  # chat.postMessage: about one message a second per channel
# more between two gateways' posts to one channel: the second's transit may be the shorter
SHARED_MARGIN_S = 0.1
SEND_ATTEMPTS = 8


class CountedWebClient(AsyncWebClient):
    """slack_sdk's client, counting each Web API call and each 429 by method
    (``frontdesk_platform_calls``, ``frontdesk_platform_rate_limited``): every method of the
    client, bolt's and Socket Mode's included, goes through ``api_call``."""

    async def api_call(self, api_method: str, **kwargs: Any) -> Any:
        metrics.PLATFORM_CALLS.labels("slack", api_method).inc()
        try:
            return await super().api_call(api_method, **kwargs)
        except SlackApiError as exc:
            if exc.response.status_code == 429:
                metrics.PLATFORM_LIMITED.labels("slack", api_method).inc()
            raise


class _StillLimited(Exception):
    """Every attempt at a call was answered 429."""


class SlackApi:
    """The sending part of ``SlackChannel``, which sets these attributes."""

    client: AsyncWebClient | None
    budget: UpdateBudget
    retries_after_429: int
    _next_post: dict[str, float]  # channel -> earliest time of its next post
    _post_locks: defaultdict[str, asyncio.Lock]
    team_id: str
    # scaled mode: reserves a place's next moment among every gateway's calls (TurnQueue.slot)
    shared_slot: Callable[[list[tuple[str, float, float]]], Awaitable[float]] | None = None

    async def post(
        self, channel: str, thread_ts: str, text: str, *, blocks: list[Any] | None = None
    ) -> str:
        """chat.postMessage in the thread (``thread_ts`` empty: a message of its own); returns
        the message's ts. Posts to one channel go one at a time, each a second after Slack
        answered the one before (so transit jitter cannot put two in one second at Slack's
        end)."""

        async def paced() -> str:
            wait = self._next_post.get(channel, 0.0) - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._shared_pace(f"slack:post:{self.team_id}:{channel}", POST_GAP_S)
            try:
                response = await self._api().chat_postMessage(
                    channel=channel,
                    thread_ts=thread_ts or None,
                    text=text,
                    blocks=blocks,
                    unfurl_links=False,
                )
                return str(response["ts"])
            finally:
                self._next_post[channel] = time.monotonic() + POST_GAP_S

        async def later(wait: float) -> None:  # the next try waits in paced()
            self._next_post[channel] = max(self._next_post[channel], time.monotonic() + wait)

        async with self._post_locks[channel]:
            try:
                ts = await self._sent(f"chat.postMessage to {channel}", paced, waiting=later)
            except _StillLimited:
                raise FrontdeskError(f"could not post to Slack channel {channel}") from None
        assert ts is not None  # a post is never refused quietly: its error was raised
        return ts

    async def _shared_pace(self, place: str, gap_s: float) -> None:
        """With several gateways, wait for ``place``'s next moment among all their calls (one
        Redis round trip); Redis away: this process's own pacing alone."""
        if self.shared_slot is None:
            return
        try:
            wait = await self.shared_slot([(place, gap_s, SHARED_MARGIN_S)])
        except QueueUnavailable as exc:
            log.warning("cannot pace %s with the other gateways: %s", place, exc)
            return
        if wait > 0:
            await asyncio.sleep(wait)

    async def update(
        self, channel: str, ts: str, text: str, slot: list[float], *,
        blocks: list[Any] | None = None,
    ) -> bool:  # fmt: skip
        """chat.update in a budget slot (stamped when Slack answers). False when Slack refused
        the update for good (the message was deleted, say)."""
        current = slot

        async def once() -> bool:
            try:
                await self._api().chat_update(channel=channel, ts=ts, text=text, blocks=blocks)
                return True
            finally:
                current[0] = time.monotonic()

        async def waited(wait: float) -> None:  # a 429 holds the whole budget, then a new slot
            nonlocal current
            await self.budget.hold(wait)
            await asyncio.sleep(wait)
            current = await self.budget.final()

        try:
            done = await self._sent(f"chat.update of {ts}", once, refused_ok=True, waiting=waited)
        except _StillLimited:
            raise FrontdeskError(f"could not update Slack message {ts}") from None
        return done is not None

    async def replace_message(
        self, channel: str, ts: str, text: str, blocks: list[Any] | None = None
    ) -> None:
        """chat.update outside a reply's budget (a handoff's card: rare), waiting out 429s; a
        refusal is logged."""

        async def once() -> bool:
            await self._api().chat_update(channel=channel, ts=ts, text=text, blocks=blocks)
            return True

        try:
            await self._sent(f"chat.update of {ts}", once, refused_ok=True)
        except _StillLimited:
            log.warning("chat.update of %s: still rate-limited, message left as it was", ts)

    async def delete(self, channel: str, ts: str) -> None:
        """chat.delete, waiting out 429s; a refusal is logged (the message stays)."""

        async def once() -> bool:
            await self._api().chat_delete(channel=channel, ts=ts)
            return True

        try:
            await self._sent(f"chat.delete of {ts}", once, refused_ok=True)
        except _StillLimited:
            log.warning("chat.delete of %s: still rate-limited, message left", ts)

    async def _sent(
        self,
        what: str,
        call: Callable[[], Awaitable[T]],
        *,
        refused_ok: bool = False,
        waiting: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> T | None:
        """``call()`` until Slack takes it, at most ``SEND_ATTEMPTS`` times, each 429 waited out
        through ``waiting(seconds)``. Returns what the call returned, or None when Slack refused
        it for good (logged; with ``refused_ok`` only, else the error is raised). Raises
        _StillLimited when every attempt was rate-limited."""
        for _attempt in range(SEND_ATTEMPTS):
            try:
                return await call()
            except SlackApiError as exc:
                wait = self._retry_after(exc, refused_ok=refused_ok)
                if wait < 0:
                    log.warning("%s refused: %s", what, exc.response.get("error"))
                    return None
                await waiting(wait)
        raise _StillLimited(what)

    def _retry_after(self, exc: SlackApiError, *, refused_ok: bool = False) -> float:
        """Seconds to wait before retrying a rate-limited call; anything else is raised (or,
        with ``refused_ok``, answered with -1)."""
        response = exc.response
        if response.status_code != 429:
            if refused_ok:
                return -1.0
            raise exc
        self.retries_after_429 += 1
        headers = {k.lower(): v for k, v in (response.headers or {}).items()}
        try:
            wait = float(headers.get("retry-after", 1))
        except ValueError:
            wait = 1.0
        log.warning("slack 429 on %s: waiting %.0fs", response.api_url, wait)
        return wait

    def _api(self) -> AsyncWebClient:
        assert self.client is not None, "the Slack channel is not started"
        return self.client
