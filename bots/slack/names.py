"""Slack users' display names for the Slack channel: ``users.info`` looked up after the ack (never
before it), new users in rounds a few at a time, and cached for an hour (a failed lookup for a
minute). The names are filled in on what was stored without them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

if TYPE_CHECKING:
    from ..gateway import Gateway

log = logging.getLogger(__name__)

USER_NAME_TTL_S = 3600.0
NAME_BATCH_S = 0.5  # new users' names are looked up in rounds this far apart…
LOOKUPS_AT_ONCE = 5  # …this many at a time (users.info is Tier 4, about 100 a minute)
REMEMBERED = 10_000  # event ids and user names kept in memory


class SlackNames:
    """The display-name part of ``SlackChannel``, which sets these attributes."""

    name: str
    client: AsyncWebClient | None
    _gateway: Gateway | None
    _names: OrderedDict[str, tuple[float, str | None]]
    _unnamed: set[str]

    def _known_name(self, user_id: str) -> tuple[bool, str | None]:
        """(whether the cache knows, the name). A failed lookup is known as None for a minute."""
        cached = self._names.get(user_id)
        if cached is None or cached[0] <= time.monotonic():
            return False, None
        return True, cached[1]

    async def _name_unnamed(self) -> None:
        """Look up the display names of users first seen since the last round (users.info, a
        few at a time) and record them on what was stored without them. A burst of new users
        gathers for a moment first, so the burst's acks never compete with this."""
        while self._unnamed:
            await asyncio.sleep(NAME_BATCH_S)
            users, self._unnamed = list(self._unnamed), set()
            names: dict[str, str] = {}
            for start in range(0, len(users), LOOKUPS_AT_ONCE):
                batch = users[start : start + LOOKUPS_AT_ONCE]
                found = await asyncio.gather(*(self._lookup(u) for u in batch))
                names.update((u, n) for u, n in zip(batch, found, strict=True) if n)
            assert self._gateway is not None
            await self._gateway.name_users(self.name, names)

    async def _lookup(self, user_id: str) -> str | None:
        assert self.client is not None
        name, ttl = None, USER_NAME_TTL_S
        try:
            user = (await self.client.users_info(user=user_id))["user"]
            profile = user.get("profile") or {}
            name = profile.get("display_name") or profile.get("real_name") or user.get("name")
        except (SlackApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("users.info %s failed: %s", user_id, exc)
            ttl = 60.0  # ask again soon
        self._names[user_id] = (time.monotonic() + ttl, name)
        self._names.move_to_end(user_id)
        if len(self._names) > REMEMBERED:
            self._names.popitem(last=False)
        return name
