"""``SlackChannel``: construction, start and stop (Socket Mode or HTTP Events API), taking events
(the checks of who is answered, commands, dedupe) and delivering replies. Sending is ``SlackApi``'s
(``api``), names ``SlackNames``' (``names``), the live reply ``LiveReply``'s (``reply``)."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections import OrderedDict, defaultdict
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from frontdesk import texts
from frontdesk.errors import ConfigError, FrontdeskError, NotAccepted
from frontdesk.settings import Settings
from frontdesk.storage import Rating
from frontdesk.wire import InboundMessage

from ..channel import ReplyStream
from .api import CountedWebClient
from .desk import CLAIM, RESOLVE, RESOLVE_THREAD, SlackDesk
from .mrkdwn import to_mrkdwn
from .names import NAME_BATCH_S, REMEMBERED, SlackNames
from .payloads import handled, readable
from .reply import RATE_DOWN, RATE_UP, LiveReply, SharedUpdateBudget, UpdateBudget

if TYPE_CHECKING:
    from ..gateway import Gateway

log = logging.getLogger(__name__)

SOCKET_CONNECT_S = 30.0
# Words that act as commands when they are the whole message (Slack keeps "/" for its own)
COMMAND_WORDS = {
    "reset": "/reset", "new": "/reset", "stop": "/stop", "help": "/help", "human": "/human",
    "bot": "/bot",
}  # fmt: skip
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


# the events that say this app may no longer act in the workspace
GONE_EVENTS = frozenset({"tokens_revoked", "app_uninstalled"})


class _AckingApp(AsyncApp):
    """Bolt, acking what frontdesk does not read. Bolt answers a signed request no listener
    matched (an event type frontdesk does not handle) with 404, and one whose fields are not of
    the types it assumes with a 500 (its matchers raise); Slack sends a non-2xx again, and turns
    an app's events off when more than 5% of its deliveries fail within an hour. So a signed
    request of a kind frontdesk has no listener for, or of a shape Slack never sends, is acked
    here and dropped before bolt reads it (``payloads``), and a 404 becomes a 200. A request
    whose signature fails is refused (401) all the same."""

    def __init__(self, *, signing_secret: str | None, **kwargs: Any) -> None:
        super().__init__(signing_secret=signing_secret, **kwargs)
        self._verifier = SignatureVerifier(signing_secret) if signing_secret else None

    def _signed(self, req: AsyncBoltRequest) -> bool:
        if req.mode == "socket_mode":  # over an authenticated socket, with no signature
            return True
        if self._verifier is None:
            return False
        stamp = next(iter(req.headers.get("x-slack-request-timestamp") or ()), None)
        signature = next(iter(req.headers.get("x-slack-signature") or ()), None)
        try:
            return self._verifier.is_valid(req.raw_body, stamp, signature)
        except ValueError:  # a timestamp that is no number
            return False

    async def async_dispatch(self, req: AsyncBoltRequest) -> BoltResponse:
        body = req.body
        if not readable(body) or not handled(body):
            if not self._signed(req):
                return BoltResponse(status=401, body="")
            if not readable(body):
                log.warning("slack: a signed request that cannot be read; acked and dropped")
            else:
                log.debug("slack request of a kind frontdesk does not handle: acked and dropped")
            return BoltResponse(status=200, body="")
        response = await super().async_dispatch(req)
        if response.status == 404:  # no listener matched (an action id of another app's)
            return BoltResponse(status=200, body="")
        return response


class SlackChannel(SlackNames, SlackDesk):
    name = "slack"
    replies_from_any_gateway = True  # a channel and a thread ts are all a reply needs
    bursts = True  # users split a question over quick messages (FRONTDESK_BURST_MS)
    redelivers = True  # an event not acked (storage down) comes again: 1 min, then 5 min

    def __init__(self, settings: Settings) -> None:
        assert settings.slack_bot_token, "SlackChannel needs FRONTDESK_SLACK_BOT_TOKEN"
        self.settings = settings
        # a reply's message is updated at most this often (LiveReply): its deltas need come no
        # faster
        self.shows_every_s = settings.slack_edit_interval
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
        self._closing: set[asyncio.Task[None]] = set()
        self.revoked = False  # tokens_revoked or app_uninstalled: nothing more is taken or sent
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
        if gateway.queue.shared_by_workers:  # other gateways may post to the same channels
            self.shared_slot = functools.partial(gateway.queue.slot, owner=gateway.id)
        self._session = aiohttp.ClientSession()
        self.client = CountedWebClient(
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
            if gateway.queue.shared_by_workers:  # the workspace's update budget is theirs too
                self.budget = SharedUpdateBudget(
                    self.settings.slack_updates_per_minute, gateway.queue,
                    f"slack:updates:{self.team_id}", gateway.owner,
                )  # fmt: skip
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
        app = _AckingApp(
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
        app.action(CLAIM)(self._on_desk_action)
        app.action(RESOLVE)(self._on_desk_action)
        app.action(RESOLVE_THREAD)(self._on_thread_resolve)
        app.action(RATE_UP)(self._on_rating)
        app.action(RATE_DOWN)(self._on_rating)
        app.event(re.compile(".*"))(self._on_other_event)  # after the ones above: the rest
        app.error(self._on_error)
        return app

    async def stop(self) -> None:
        await self._close_socket()
        if self._closing:
            await asyncio.wait(self._closing)
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
        try:
            bolt_request = await to_bolt_request(request)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
            # bolt reads the body's team, user and channel before it checks the signature:
            # a body of another shape (no JSON object) is no request of Slack's
            log.warning("slack: a request that cannot be read (%s); refused",
                        type(exc).__name__)  # fmt: skip
            return web.Response(status=400, text="not a Slack request")
        response = await self.app.async_dispatch(bolt_request)
        return await to_aiohttp_response(response)

    async def _on_other_event(self, event: dict[str, Any]) -> None:
        """An event frontdesk does not answer (a reaction, a join, App Home opened): acked and
        dropped. One saying that this app's bot token is revoked, or the app uninstalled, stops
        the channel: nothing it could post would go through."""
        kind = str(event.get("type") or "")
        if kind not in GONE_EVENTS:
            log.debug("slack %s event dropped", kind or "untyped")
            return
        bots = (event.get("tokens") or {}).get("bot") if kind == "tokens_revoked" else None
        if isinstance(bots, list) and self.bot_user_id and self.bot_user_id not in bots:
            log.info("slack: tokens of other users revoked; this bot's stands")
            return
        log.warning("slack: %s: this app's token no longer works; the Slack channel stops "
                    "(reinstall the app and restart the gateway)", kind)  # fmt: skip
        self.revoked = True
        if self._socket is not None:  # closed once this event is acked
            task = asyncio.create_task(self._close_socket(after_s=1.0))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _close_socket(self, after_s: float = 0.0) -> None:
        await asyncio.sleep(after_s)
        socket, self._socket = self._socket, None
        if socket is not None:
            await socket.close_async()

    async def _on_mention(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        await self._on_event(body, event, mentioned=True)

    async def _on_message(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        await self._on_event(body, event, mentioned=False)

    async def _on_event(self, body: dict[str, Any], event: dict[str, Any], *, mentioned: bool):
        event_id = body.get("event_id")
        if self.revoked:
            return  # acked and dropped: no reply could be posted
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
        if self._in_desk(channel):  # agents at the handoff desk, not customers
            known, name = self._known_name(user)
            await self._agent_message(event, text, name)
            if not known:  # looked up after the ack: their later messages carry it
                self._name_later(user)
            return
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
            customer = await self._gateway.thread_customer(self.name, msg.conversation_key)
            if customer is None:
                return
            if customer and customer != user:  # a person from the team answers the customer
                known, name = self._known_name(user)
                await self._gateway.person_in_thread(
                    replace(msg, user_name=name),
                    lambda handoff_id: self.show_takeover(channel, root, handoff_id),
                )
                if not known:
                    self._name_later(user)
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
            self._name_later(user)

    def _name_later(self, user: str) -> None:
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

    async def _on_rating(
        self, ack: Any, body: dict[str, Any], action: dict[str, Any], respond: Any
    ) -> None:
        """👍 or 👎 under an answer: stored (one per user and answer), and said back to the one
        who pressed it alone (an ephemeral message through the press's response_url)."""
        await ack()
        assert self._gateway is not None
        value = str(action.get("value") or "")
        user = str((body.get("user") or {}).get("id") or "")
        if not value.isdigit() or not user:
            return
        rating = Rating.UP if action.get("action_id") == RATE_UP else Rating.DOWN
        said = await self._gateway.rate(self.name, user, int(value), rating)
        if not isinstance(body.get("response_url"), str):
            return  # a press always has one; nowhere to say it otherwise
        try:
            await respond(text=said, response_type="ephemeral", replace_original=False)
        except (aiohttp.ClientError, OSError, SlackApiError) as exc:
            log.warning("could not answer a rating: %s", exc)

    async def _on_error(self, error: Exception, body: dict[str, Any]) -> None:
        event_id = body.get("event_id") if isinstance(body, dict) else None
        event_id = event_id if isinstance(event_id, str) else "?"  # never the body's content
        if isinstance(error, NotAccepted):  # no ack: Slack sends the event again
            log.error("slack event %s not taken (%s)", event_id, error)
            return
        log.error("slack event %s failed", event_id, exc_info=error)

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

    # -- outbound -------------------------------------------------------------------------------

    async def deliver(self, reply: ReplyStream) -> None:
        if self.revoked:
            log.warning("slack: turn %s not shown: this app's token was revoked", reply.turn_id)
            return
        meta = reply.inbound.meta
        await LiveReply(self, meta["channel"], meta["thread_ts"]).run(reply)

    async def _say(self, channel: str, thread_ts: str, text: str) -> None:
        """A short reply of the channel's own (help, refusals)."""
        await self.post(channel, thread_ts, to_mrkdwn(text))
