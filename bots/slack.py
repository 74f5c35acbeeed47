"""The Slack channel: slack-bolt's ``AsyncApp`` inside the gateway's event loop.

Events arrive over Socket Mode when ``FRONTDESK_SLACK_APP_TOKEN`` is set, and otherwise as HTTP
posts to ``/slack/events`` on the gateway's HTTP server, where bolt checks every request's
signature and timestamp (401 when either is wrong). Bolt runs with ``process_before_response``:
the message is stored and queued before the ack goes back, and nothing is generated before it.

Who gets answered: direct messages, @mentions in channels, and follow-ups in a thread the bot
is in. A reply goes in the thread of the message it answers. In a channel a thread is one
conversation (team, channel, thread); a DM is one conversation until the user says "reset".
Bots (this one included), edits and deletions get no reply. A retried event gets no second reply:
its event id is remembered here, and its message's key (channel + ts) in storage, which also
survives a restart.

A reply streams into a placeholder, then grows by ``chat.update``. Updates are Tier 3 (about 50 a
minute for the whole app), so the channel keeps one app-wide budget: a streaming reply gets an
interim update only while room remains for the final update of every reply still streaming, and
final updates queue for room. Each message is updated at most every ``FRONTDESK_SLACK_EDIT_
INTERVAL``, each channel gets at most one new message a second, and a 429 is waited out and
retried, so no reply is lost. Text is converted from Markdown to mrkdwn and sent as ``text`` (no
blocks), at most 4,000 characters a message; longer replies continue in new messages.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict, defaultdict
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from frontdesk import texts
from frontdesk.errors import ConfigError, FrontdeskError
from frontdesk.settings import Settings
from frontdesk.wire import InboundMessage

from .channel import ReplyStream
from .slack_reply import LiveReply, UpdateBudget, to_mrkdwn

if TYPE_CHECKING:
    from .gateway import Gateway

log = logging.getLogger(__name__)

POST_GAP_S = 1.0  # chat.postMessage: about one message a second per channel
SEND_ATTEMPTS = 8
USER_NAME_TTL_S = 3600.0
NAME_BATCH_S = 0.5  # new users' names are looked up in rounds this far apart…
LOOKUPS_AT_ONCE = 5  # …this many at a time (users.info is Tier 4, about 100 a minute)
SOCKET_CONNECT_S = 30.0
REMEMBERED = 10_000  # event ids and user names kept in memory
# Words that act as commands when they are the whole message (Slack keeps "/" for its own)
COMMAND_WORDS = {"reset": "/reset", "new": "/reset", "stop": "/stop", "help": "/help"}
# Message subtypes a person produces; every other subtype (edits, deletions, joins, bots) is not
# something to answer
ANSWERED_SUBTYPES = {None, "file_share", "thread_broadcast"}

SLACK_HELP = (
    "I'm a chat assistant. Mention me in a channel, or write to me directly, and I'll answer in "
    "a thread. In a channel, each thread is its own conversation. In a direct message, say "
    "*reset* (or use `/frontdesk reset`) to start over, *stop* to stop an answer in progress, "
    "and *help* to see this."
)
CHANNEL_RESET = (
    "In a channel, each thread is its own conversation: mention me in a new message to start one."
)


class SlackChannel:
    name = "slack"
    replies_from_any_gateway = True  # a channel and a thread ts are all a reply needs

    def __init__(self, settings: Settings) -> None:
        assert settings.slack_bot_token, "SlackChannel needs FRONTDESK_SLACK_BOT_TOKEN"
        self.settings = settings
        self._allowed_channels = set(settings.slack_allowed_channels)
        self._allowed_users = set(settings.slack_allowed_users)
        self._refused: set[str] = set()  # users and channels told once that they are refused
        self._seen_events: OrderedDict[str, None] = OrderedDict()
        self._names: OrderedDict[str, tuple[float, str | None]] = OrderedDict()
        self._unnamed: set[str] = set()  # users whose names are still to be looked up
        self._namer: asyncio.Task[None] | None = None
        self._next_post: dict[str, float] = {}  # channel -> earliest time of its next post
        self._post_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.budget = UpdateBudget(settings.slack_updates_per_minute)
        self._gateway: Gateway | None = None
        self._session: aiohttp.ClientSession | None = None
        self._socket: AsyncSocketModeHandler | None = None
        self.client: AsyncWebClient | None = None
        self.app: AsyncApp | None = None
        self.team_id = self.bot_user_id = self.bot_id = ""
        self.retries_after_429 = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> SlackChannel | None:
        if not settings.slack_bot_token:
            return None
        if not settings.slack_app_token and not settings.slack_signing_secret:
            raise ConfigError(
                "FRONTDESK_SLACK_BOT_TOKEN is set, but neither FRONTDESK_SLACK_SIGNING_SECRET "
                "(HTTP Events API) nor FRONTDESK_SLACK_APP_TOKEN (Socket Mode) is"
            )
        return cls(settings)

    @property
    def socket_mode(self) -> bool:
        return self.settings.slack_app_token is not None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._session = aiohttp.ClientSession()
        self.client = AsyncWebClient(
            token=self.settings.slack_bot_token,
            base_url=self.settings.slack_api_url,
            session=self._session,
            retry_handlers=[
                AsyncConnectionErrorRetryHandler(max_retry_count=2),
                AsyncServerErrorRetryHandler(max_retry_count=2),
            ],
        )
        try:
            await self._identify()
            self.app = self._build_app()
            if self.socket_mode:
                self._socket = AsyncSocketModeHandler(
                    self.app, self.settings.slack_app_token, web_client=self.client
                )
                await self._connect_socket(self._socket)
            else:
                gateway.http.add_route("POST", self.settings.slack_events_path, self._on_http)
        except BaseException:
            await self.stop()
            raise

    async def _identify(self) -> None:
        assert self.client is not None
        url = self.settings.slack_api_url
        try:
            auth = await self.client.auth_test()
        except SlackApiError as exc:
            error = exc.response.get("error", exc.response.status_code)
            raise ConfigError(f"Slack refused FRONTDESK_SLACK_BOT_TOKEN: {error}") from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise FrontdeskError(f"cannot reach the Slack Web API at {url}: {exc}") from exc
        self.team_id = auth.get("team_id") or ""
        self.bot_user_id = auth.get("user_id") or ""
        self.bot_id = auth.get("bot_id") or ""

    async def _connect_socket(self, socket: AsyncSocketModeHandler) -> None:
        """Open Socket Mode. The client retries every failure forever, so the app token is
        checked first (a refused one is a configuration error) and the connect is bounded."""
        assert self.client is not None and self.settings.slack_app_token is not None
        try:
            await self.client.apps_connections_open(app_token=self.settings.slack_app_token)
        except SlackApiError as exc:
            error = exc.response.get("error", exc.response.status_code)
            raise ConfigError(f"Slack refused FRONTDESK_SLACK_APP_TOKEN: {error}") from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            url = self.settings.slack_api_url
            raise FrontdeskError(f"cannot reach the Slack Web API at {url}: {exc}") from exc
        try:
            await asyncio.wait_for(socket.connect_async(), SOCKET_CONNECT_S)
        except TimeoutError:
            raise FrontdeskError(
                f"cannot open Slack's Socket Mode connection within {SOCKET_CONNECT_S:.0f} s"
            ) from None

    def _build_app(self) -> AsyncApp:
        app = AsyncApp(
            client=self.client,
            signing_secret=self.settings.slack_signing_secret,
            # Socket Mode requests come over an authenticated socket and carry no signature
            request_verification_enabled=not self.socket_mode,
            process_before_response=True,
            logger=logging.getLogger(f"{__name__}.bolt"),
        )
        app.event("app_mention")(self._on_mention)
        app.event("message")(self._on_message)
        app.command("/frontdesk")(self._on_command)
        app.error(self._on_error)
        return app

    async def stop(self) -> None:
        socket, self._socket = self._socket, None
        if socket is not None:
            await socket.close_async()
        if self._namer is not None:  # names being filled in: a moment, then let them go
            await asyncio.wait([self._namer], timeout=NAME_BATCH_S + 2.0)
            self._namer.cancel()
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        self.app = None

    # -- inbound --------------------------------------------------------------------------------

    async def _on_http(self, request: web.Request) -> web.Response:
        if self.app is None:
            return web.Response(status=503)
        response = await self.app.async_dispatch(await to_bolt_request(request))
        return await to_aiohttp_response(response)

    async def _on_mention(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        await self._on_event(body, event, mentioned=True)

    async def _on_message(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        await self._on_event(body, event, mentioned=False)

    async def _on_event(self, body: dict[str, Any], event: dict[str, Any], *, mentioned: bool):
        event_id = body.get("event_id")
        if event_id and event_id in self._seen_events:
            log.info("slack event %s delivered again; dropped", event_id)
            return  # a retry of an event this gateway already took
        await self._take(body, event, mentioned=mentioned)
        if event_id:  # only once taken: a retry of an event that failed here is taken again
            self._seen_events[event_id] = None
            if len(self._seen_events) > REMEMBERED:
                self._seen_events.popitem(last=False)

    async def _take(self, body: dict[str, Any], event: dict[str, Any], *, mentioned: bool):
        user = event.get("user")
        if (
            not user
            or event.get("bot_id")
            or user == self.bot_user_id
            or event.get("subtype") not in ANSWERED_SUBTYPES
        ):
            return  # bots (this one too), edits, deletions, joins: nothing to answer
        assert self._gateway is not None
        channel = event.get("channel", "")
        direct = event.get("channel_type") == "im" or channel.startswith("D")
        root = event.get("thread_ts") or event.get("ts", "")
        text = self._without_mention(event.get("text") or "")
        command = COMMAND_WORDS.get(text.strip().strip(".!").lower())
        msg = InboundMessage(
            platform=self.name,
            chat_id=f"{body.get('team_id') or event.get('team') or self.team_id}:{channel}",
            user_id=user,
            message_id=event.get("ts", ""),
            text=command or text,
            thread_id=None if direct else root,  # a DM is one conversation, a thread another
            meta={"channel": channel, "thread_ts": root},
        )
        if not mentioned and not direct:
            # In a channel, a message without a mention is answered only as a follow-up in a
            # thread the bot is in; one with a mention comes again as app_mention.
            if self._mentions_me(event.get("text") or "") or not event.get("thread_ts"):
                return
            if not await self._gateway.continues_conversation(self.name, msg.conversation_key):
                return
        if not await self._allowed(user, channel, direct, root):
            return
        if command == "/help":
            await self._say(channel, root, SLACK_HELP)
            return
        if not text.strip() and event.get("files"):
            await self._say(channel, root, texts.NON_TEXT)
            return
        known, name = self._known_name(user)
        await self._gateway.handle(replace(msg, user_name=name), self)
        if not known:  # looked up after the ack, then filled in where it was stored
            self._unnamed.add(user)
            if self._namer is None or self._namer.done():
                self._namer = asyncio.create_task(self._name_unnamed())

    async def _on_command(self, ack: Any, command: dict[str, Any]) -> None:
        """``/frontdesk reset`` (or ``help``), answered privately to whoever used it."""
        word = (command.get("text") or "").strip().lower()
        channel = command.get("channel_id", "")
        if word in ("reset", "new"):
            if not channel.startswith("D"):
                await ack(CHANNEL_RESET)
                return
            assert self._gateway is not None
            team = command.get("team_id") or self.team_id
            await ack(await self._gateway.reset(self.name, f"{team}:{channel}"))
            return
        await ack(SLACK_HELP)

    async def _on_error(self, error: Exception, body: dict[str, Any]) -> None:
        log.error("slack event %s failed", body.get("event_id"), exc_info=error)

    def _mentions_me(self, text: str) -> bool:
        return f"<@{self.bot_user_id}" in text

    def _without_mention(self, text: str) -> str:
        """ "<@U0BOT> what time is it?" -> "what time is it?"."""
        return re.sub(rf"<@{re.escape(self.bot_user_id)}(\|[^>]*)?>", "", text).strip()

    async def _allowed(self, user: str, channel: str, direct: bool, thread_ts: str) -> bool:
        """The allowlists: channels (not DMs) by id, users by id. Refused once, politely."""
        refused = None
        if not direct and self._allowed_channels and channel not in self._allowed_channels:
            refused = channel
        elif self._allowed_users and user not in self._allowed_users:
            refused = user
        if refused is None:
            return True
        if refused not in self._refused:
            self._refused.add(refused)
            await self._say(channel, thread_ts, texts.NOT_ALLOWED)
        return False

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

    # -- outbound -------------------------------------------------------------------------------

    async def deliver(self, reply: ReplyStream) -> None:
        meta = reply.inbound.meta
        await LiveReply(self, meta["channel"], meta["thread_ts"]).run(reply)

    async def _say(self, channel: str, thread_ts: str, text: str) -> None:
        """A short reply of the channel's own (help, refusals)."""
        await self.post(channel, thread_ts, to_mrkdwn(text))

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
