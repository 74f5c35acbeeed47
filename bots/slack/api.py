"""The Slack channel's calls to the Web API: ``chat.postMessage``, ``chat.update`` and
``chat.delete``, the only code that sends to Slack. Posts to one channel go one at a time, a second
apart, counted from Slack's answer to the one before; updates take slots of the app-wide
``UpdateBudget``; a 429 is waited out for its ``Retry-After`` and the call tried again."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from frontdesk.errors import FrontdeskError

from .reply import UpdateBudget

log = logging.getLogger(__name__)

POST_GAP_S = 1.0  # chat.postMessage: about one message a second per channel
SEND_ATTEMPTS = 8


class SlackApi:
    """The sending part of ``SlackChannel``, which sets these attributes."""

    client: AsyncWebClient | None
    budget: UpdateBudget
    retries_after_429: int
    _next_post: dict[str, float]  # channel -> earliest time of its next post
    _post_locks: defaultdict[str, asyncio.Lock]

    async def post(self, channel: str, thread_ts: str, text: str) -> str:
        """chat.postMessage in the thread; returns the message's ts. Posts to one channel go
        one at a time, each a second after Slack answered the one before (so transit jitter
        cannot put two in one second at Slack's end)."""
        async with self._post_locks[channel]:
            for _attempt in range(SEND_ATTEMPTS):
                wait = self._next_post.get(channel, 0.0) - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                try:
                    response = await self._api().chat_postMessage(
                        channel=channel, thread_ts=thread_ts, text=text, unfurl_links=False
                    )
                    return str(response["ts"])
                except SlackApiError as exc:
                    retry_at = time.monotonic() + self._retry_after(exc)
                finally:
                    self._next_post[channel] = time.monotonic() + POST_GAP_S
                self._next_post[channel] = max(self._next_post[channel], retry_at)
        raise FrontdeskError(f"could not post to Slack channel {channel}")

    async def update(self, channel: str, ts: str, text: str, slot: list[float]) -> bool:
        """chat.update in a budget slot (stamped when Slack answers). False when Slack refused
        the update for good (the message was deleted, say)."""
        for _attempt in range(SEND_ATTEMPTS):
            try:
                await self._api().chat_update(channel=channel, ts=ts, text=text)
                return True
            except SlackApiError as exc:
                wait = self._retry_after(exc, refused_ok=True)
                if wait < 0:
                    log.warning("chat.update of %s refused: %s", ts, exc.response.get("error"))
                    return False
                self.budget.hold(wait)
                await asyncio.sleep(wait)
                slot = await self.budget.final()
            finally:
                slot[0] = time.monotonic()
        raise FrontdeskError(f"could not update Slack message {ts}")

    async def delete(self, channel: str, ts: str) -> None:
        """chat.delete, waiting out 429s; a refusal is logged (the message stays)."""
        for _attempt in range(SEND_ATTEMPTS):
            try:
                await self._api().chat_delete(channel=channel, ts=ts)
                return
            except SlackApiError as exc:
                wait = self._retry_after(exc, refused_ok=True)
                if wait < 0:
                    log.warning("chat.delete of %s refused: %s", ts, exc.response.get("error"))
                    return
                await asyncio.sleep(wait)
        log.warning("chat.delete of %s: still rate-limited, message left", ts)

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
