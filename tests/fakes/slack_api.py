"""A local stand-in for the Slack Web API and the Events API sender, for tests that run the real
slack_sdk client.

This module owns `FakeSlack`: an aiohttp server on 127.0.0.1 that answers the Web API methods
frontdesk uses (auth.test, chat.postMessage, chat.update, chat.delete, users.info,
conversations.replies, apps.connections.open) with Slack's response shapes and its limits: 40,000 characters of text,
3,000 characters of section block text, the rate limits that answer 429 with Retry-After, and the
token types (the app-level token only opens Socket Mode connections, the bot token does the rest).
On the Events API side it builds event envelopes, and either signs them as Slack does and posts
them to the app's /slack/events endpoint, or delivers them over a Socket Mode websocket (GET
/socket, with a one-shot ticket from apps.connections.open) and waits for the app's ack.
Tests read back what the app did through `calls`, `messages_in`, `socket_acks` and `wait_for`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import math
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from ._server import FakeServer

MAX_TEXT_CHARS = 40_000
# Slack accepts up to 40,000 but cuts the displayed text here, so apps should stay below it
DISPLAY_TEXT_CHARS = 4_000
MAX_SECTION_TEXT_CHARS = 3_000
MAX_SECTION_FIELD_CHARS = 2_000
MAX_BLOCKS = 50
APP_ID = "A0TEST"
OTHER_BOT_ID = "B0OTHER"
# Tier 3: 50+ per minute per app; Slack allows bursts, the fake holds the app to exactly 50
UPDATES_PER_MINUTE = 50
# The Web API methods that take the app-level token (xapp-) and no other
APP_TOKEN_METHODS = frozenset({"apps.connections.open"})
# Slack expects a Socket Mode envelope acked within 3 seconds; the fake waits longer to report it
SOCKET_ACK_TIMEOUT = 10.0
SOCKET_CONNECT_TIMEOUT = 5.0


@dataclass
class Call:
    """One request the fake answered, refused ones included."""

    method: str
    params: dict[str, Any]
    at: float
    status: int
    response: dict[str, Any]


@dataclass
class SocketAck:
    """One acknowledgement a Socket Mode client sent back: `{"envelope_id": ..., "payload": ...}`,
    the payload being optional."""

    envelope_id: str
    payload: dict[str, Any] | None
    at: float


class ApiError(Exception):
    """A Web API refusal: `{"ok": false, "error": ...}`, HTTP 200 unless rate limited."""

    def __init__(
        self, error: str, *, status: int = 200, retry_after: int | None = None, **extra: Any
    ) -> None:
        super().__init__(error)
        self.error, self.status, self.retry_after, self.extra = error, status, retry_after, extra


def _rate_limited(wait: float) -> ApiError:
    return ApiError("ratelimited", status=429, retry_after=max(1, math.ceil(wait)))


def _channel_type(channel: str) -> str:
    return {"D": "im", "G": "group"}.get(channel[:1], "channel")


def _ts_key(ts: str) -> tuple[int, int]:
    seconds, _, micros = ts.partition(".")
    return int(seconds), int(micros or 0)


def _rich_text(text: str) -> list[dict[str, Any]]:
    """The rich_text block Slack's clients attach to what a user types."""
    element = {"type": "rich_text_section", "elements": [{"type": "text", "text": text}]}
    return [{"type": "rich_text", "block_id": uuid.uuid4().hex[:5], "elements": [element]}]


def _too_long(problems: list[str], text: Any, limit: int, pointer: str) -> None:
    if isinstance(text, str) and len(text) > limit:
        problems.append(f"must be less than {limit + 1} characters [json-pointer:{pointer}]")


def _check_blocks(blocks: Any) -> list[dict[str, Any]]:
    """The blocks as a list, or Slack's refusal naming each offending field."""
    if isinstance(blocks, str):
        # Form-encoded calls carry blocks as a JSON string
        try:
            blocks = json.loads(blocks)
        except ValueError:
            raise ApiError("invalid_blocks_format") from None
    if not isinstance(blocks, list):
        raise ApiError("invalid_blocks_format")
    problems: list[str] = []
    if len(blocks) > MAX_BLOCKS:
        problems.append(f"no more than {MAX_BLOCKS} items allowed [json-pointer:/blocks]")
    for i, block in enumerate(blocks):
        if isinstance(block, dict) and block.get("type") == "section":
            text = (block.get("text") or {}).get("text")
            _too_long(problems, text, MAX_SECTION_TEXT_CHARS, f"/blocks/{i}/text/text")
            for j, field in enumerate(block.get("fields") or []):
                pointer = f"/blocks/{i}/fields/{j}/text"
                _too_long(problems, field.get("text"), MAX_SECTION_FIELD_CHARS, pointer)
    if problems:
        messages = [f"[ERROR] {p}" for p in problems]
        raise ApiError("invalid_blocks", errors=problems, response_metadata={"messages": messages})
    return blocks


async def _read_params(request: web.Request) -> dict[str, Any]:
    """Query string plus body: slack_sdk sends JSON for chat.*, a query for GET methods, and a
    form when the caller passes `data=`."""
    params: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        with contextlib.suppress(ValueError):
            body = await request.json()
            params.update(body if isinstance(body, dict) else {})
    elif request.can_read_body:
        for key, value in (await request.post()).items():
            params[key] = value if isinstance(value, str) else f"<file {value.filename}>"
    return params


def _is_app_token(token: str | None) -> bool:
    return token is not None and token.startswith("xapp-")


def _token_of(request: web.Request, params: dict[str, Any]) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth.removeprefix("Bearer ").strip()
    # Slack still takes a `token` form or query field; it is popped so calls never record it
    token = params.pop("token", None)
    return token if isinstance(token, str) else None


async def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, float]:
    """POST as Slack's event sender: (status, response text, seconds the app took)."""
    started = time.monotonic()
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers) as response,
    ):
        text = await response.text()
        return response.status, text, time.monotonic() - started


class FakeSlack(FakeServer):
    """The Slack Web API on 127.0.0.1 (point AsyncWebClient at `base_url`), a signed-event
    sender for the app's Events API endpoint, and Slack's end of Socket Mode (point the
    SocketModeClient's `web_client` at `base_url` and give it `app_token`)."""

    ROUTE = "/api/{method}"

    def __init__(
        self,
        bot_token: str = "xoxb-test",
        signing_secret: str = "test-signing-secret",
        team_id: str = "T0TEST",
        bot_user_id: str = "U0BOT",
        bot_id: str = "B0BOT",
        rate_limits: bool = True,
        app_token: str = "xapp-test",
    ) -> None:
        self.bot_token, self.signing_secret, self.team_id = bot_token, signing_secret, team_id
        self.bot_user_id, self.bot_id, self.rate_limits = bot_user_id, bot_id, rate_limits
        self.app_token = app_token
        super().__init__()
        self._hooks: set[str] = set()  # response_urls handed out with button presses
        self.responses: list[dict[str, Any]] = []  # what was posted to them
        self.calls: list[Call] = []
        # users.info lookups per user id, so tests can tell whether the app caches them
        self.user_lookups: Counter[str] = Counter()
        self._users: dict[str, dict[str, Any]] = {}
        # Every message the fake knows, user and bot alike: channel -> ts -> Slack message
        self._messages: dict[str, dict[str, dict[str, Any]]] = {}
        # The bot's API posts: current text, thread_ts, every text they had, the 4,000 flag
        self._bot_posts: dict[tuple[str, str], dict[str, Any]] = {}
        self._last_ts_us = 0
        self._next_event = 1
        self._posted_at: dict[str, float] = {}
        self._updated_at: dict[tuple[str, str], float] = {}
        self._updates: deque[float] = deque()
        self._methods: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "auth.test": self._auth_test, "chat.postMessage": self._post_message,
            "chat.update": self._update, "chat.delete": self._delete,
            "users.info": self._users_info,
            "conversations.replies": self._replies,
            "conversations.info": self._conversation_info,
            "apps.connections.open": self._connections_open,
        }  # fmt: skip
        # channels that do not exist (posts and lookups answer channel_not_found), and ones the
        # bot is not in (posts answer not_in_channel); every other channel exists, bot in it
        self.missing_channels: set[str] = set()
        self.channels_without_bot: set[str] = set()
        # Socket Mode: tickets issued and not yet used, the connected sockets (newest last), the
        # acks received, and the deliveries still waiting for theirs: envelope_id -> waiter
        self.socket_acks: list[SocketAck] = []
        self.socket_connections = 0
        self._tickets: set[str] = set()
        self._sockets: list[web.WebSocketResponse] = []
        self._ack_waiters: dict[str, tuple[web.WebSocketResponse, asyncio.Future[float]]] = {}
        self.add_user(bot_user_id, "frontdesk", "Frontdesk", is_bot=True)
        # The builders' default user, so the common path needs no setup
        self.add_user("U0ALICE", "alice", "Alice")

    @property
    def base_url(self) -> str:
        # slack_sdk joins with urljoin, so without the trailing slash "api" would be replaced
        return f"http://127.0.0.1:{self.port}/api/"

    # -- lifecycle -------------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_get("/socket", self._socket)
        app.router.add_post("/actions/{hook}", self._respond)

    async def _respond(self, request: web.Request) -> web.Response:
        """A post to a response_url (the answer to a button press): kept, in order."""
        if request.match_info["hook"] not in self._hooks:
            return web.Response(status=404, text="no such response_url")
        body = await request.json()
        if not body.get("text") and not body.get("blocks"):
            return web.Response(status=400, text="no_text")
        self.responses.append(body)
        return web.Response(text="ok")

    # -- test controls and queries ---------------------------------------------------------------

    def add_user(
        self, user_id: str, name: str, display_name: str = "", *, real_name: str | None = None,
        is_bot: bool = False,
    ) -> dict[str, Any]:  # fmt: skip
        real = real_name if real_name is not None else (display_name or name)
        profile = {"display_name": display_name, "display_name_normalized": display_name,
                   "real_name": real, "real_name_normalized": real}  # fmt: skip
        self._users[user_id] = {
            "id": user_id, "team_id": self.team_id, "name": name, "deleted": False,
            "real_name": real, "tz": "Europe/Amsterdam", "is_bot": is_bot, "profile": profile,
        }  # fmt: skip
        return self._users[user_id]

    def _describe(self, call: Call) -> str:
        error = call.response.get("error", "")
        return f"{call.method} channel={call.params.get('channel')} -> {call.status} {error}"

    def calls_to(self, method: str, channel: str | None = None) -> list[Call]:
        return [
            c
            for c in self.calls
            if c.method == method and (channel is None or c.params.get("channel") == channel)
        ]

    def messages_in(self, channel: str) -> list[dict[str, Any]]:
        """The bot's posts in the channel, oldest first: `ts`, current `text`, `thread_ts`,
        `blocks`, `texts` (every text it had) and `over_4000` (any text beyond display)."""
        found = sorted(
            (_ts_key(ts), post) for (chan, ts), post in self._bot_posts.items() if chan == channel
        )
        return [{**post, "texts": list(post["texts"])} for _, post in found]

    # -- Events API: signing and sending ---------------------------------------------------------

    def sign(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        """The headers Slack sends with an event: v0 HMAC-SHA256 over "v0:{timestamp}:{body}"."""
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        base = b"v0:" + stamp.encode() + b":" + body
        digest = hmac.new(self.signing_secret.encode(), base, hashlib.sha256).hexdigest()
        return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": f"v0={digest}"}

    async def post_event(
        self, url: str, envelope: dict[str, Any], *, retry_num: int | None = None,
        retry_reason: str = "http_timeout", timestamp: int | None = None,
        signature: str | None = None,
    ) -> tuple[int, float]:  # fmt: skip
        """POST the envelope as Slack does; returns (HTTP status, seconds the app took)."""
        body = json.dumps(envelope).encode()
        headers = {"Content-Type": "application/json", **self.sign(body, timestamp)}
        if signature is not None:
            headers["X-Slack-Signature"] = signature
        if retry_num is not None:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = retry_reason
        status, _, took = await _post(url, body, headers)
        return status, took

    async def press_button(
        self, url: str, *, channel: str, message_ts: str, action_id: str,
        user: str = "U0AGENT", signature: str | None = None,
    ) -> int:  # fmt: skip
        """A person presses a button of one of the bot's messages: Slack POSTs a signed form
        whose ``payload`` is the block_actions JSON. The button must be on the message as
        posted or last updated. Returns the HTTP status."""
        post = self._bot_posts.get((channel, message_ts))
        if post is None:
            raise AssertionError(f"no bot message {message_ts} in {channel}")
        buttons = [
            element
            for block in post.get("blocks") or []
            if block.get("type") == "actions"
            for element in block.get("elements", [])
        ]
        [button] = [b for b in buttons if b.get("action_id") == action_id] or [None]
        if button is None:
            raise AssertionError(f"message {message_ts} has no button {action_id}")
        payload = {
            "type": "block_actions", "team": {"id": self.team_id, "domain": "test"},
            "user": {"id": user, "username": user.lower(), "team_id": self.team_id},
            "api_app_id": APP_ID, "token": "test-verification-token",
            "container": {"type": "message", "message_ts": message_ts, "channel_id": channel,
                          "is_ephemeral": False},
            "trigger_id": f"{int(time.time())}.{uuid.uuid4().hex[:8]}",
            "channel": {"id": channel, "name": "desk"},
            "message": {"type": "message", "ts": message_ts, "text": post["text"],
                        "blocks": post.get("blocks"), "user": self.bot_user_id},
            "response_url": self._new_hook(),
            "actions": [{"type": "button", "action_id": action_id,
                         "block_id": button.get("block_id", "b"), "value": button.get("value"),
                         "text": button.get("text"), "action_ts": self._new_ts()}],
        }  # fmt: skip
        return await self.post_interaction(url, payload, signature=signature)

    async def post_interaction(
        self, url: str, payload: dict[str, Any], *, signature: str | None = None
    ) -> int:
        """POST an interaction as Slack does (a signed form whose ``payload`` is the JSON):
        a button press, a shortcut, a legacy attachment action. Returns the HTTP status."""
        body = urlencode({"payload": json.dumps(payload)}).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded", **self.sign(body)}
        if signature is not None:
            headers["X-Slack-Signature"] = signature
        status, _, _took = await _post(url, body, headers)
        return status

    def _new_hook(self) -> str:
        hook = uuid.uuid4().hex
        self._hooks.add(hook)
        return f"http://127.0.0.1:{self.port}/actions/{hook}"

    async def url_verification(self, url: str) -> tuple[int, bool]:
        """Slack's endpoint check: (HTTP status, whether the app echoed the challenge)."""
        challenge = uuid.uuid4().hex
        envelope = {"token": "test-verification-token", "challenge": challenge,
                    "type": "url_verification"}  # fmt: skip
        body = json.dumps(envelope).encode()
        headers = {"Content-Type": "application/json", **self.sign(body)}
        status, text, _ = await _post(url, body, headers)
        return status, challenge in text

    # -- Socket Mode -----------------------------------------------------------------------------

    @property
    def socket_connected(self) -> bool:
        """Whether a Socket Mode client is connected (and has had its hello)."""
        return any(not ws.closed for ws in self._sockets)

    def count_acks(self) -> int:
        return len(self.socket_acks)

    async def wait_socket_connected(
        self,
        timeout: float = SOCKET_CONNECT_TIMEOUT,  # noqa: ASYNC109 - a plain number, as wait_for's
    ) -> None:
        """Wait until a Socket Mode client is connected; on timeout fail saying how far it got."""
        deadline = time.monotonic() + timeout
        while not self.socket_connected:
            if time.monotonic() > deadline:
                opened = len(self.calls_to("apps.connections.open"))
                raise AssertionError(
                    f"no Socket Mode client connected in {timeout}s (apps.connections.open"
                    f" calls: {opened}, connections so far: {self.socket_connections})"
                )
            await asyncio.sleep(0.01)

    async def send_socket_event(
        self, envelope: dict[str, Any], *, retry_attempt: int = 0, retry_reason: str = "",
        connect_timeout: float = SOCKET_CONNECT_TIMEOUT, ack_timeout: float = SOCKET_ACK_TIMEOUT,
    ) -> float:  # fmt: skip
        """Deliver an Events API envelope over the newest Socket Mode connection, as Slack's
        `events_api` frame, and wait for its ack; returns the seconds from sending to the ack."""
        await self.wait_socket_connected(connect_timeout)
        ws = next(ws for ws in reversed(self._sockets) if not ws.closed)
        envelope_id = str(uuid.uuid4())
        frame = {
            "envelope_id": envelope_id, "payload": envelope, "type": "events_api",
            "accepts_response_payload": False, "retry_attempt": retry_attempt,
            "retry_reason": retry_reason,
        }  # fmt: skip
        acked: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._ack_waiters[envelope_id] = (ws, acked)
        what = f"envelope {envelope_id} ({envelope.get('event', {}).get('type')} event)"
        try:
            sent = time.monotonic()
            await ws.send_json(frame)
            try:
                async with asyncio.timeout(ack_timeout):
                    acked_at = await acked
            except TimeoutError:
                raise AssertionError(f"no ack for {what} in {ack_timeout}s") from None
            return acked_at - sent
        except ConnectionError as error:
            raise AssertionError(f"the socket closed before {what} was acked: {error}") from None
        finally:
            self._ack_waiters.pop(envelope_id, None)

    def _hello(self, num_connections: int) -> dict[str, Any]:
        return {
            "type": "hello", "num_connections": num_connections,
            "debug_info": {"host": "applink-fake", "build_number": 1,
                           "approximate_connection_time": 18060},
            "connection_info": {"app_id": APP_ID},
        }  # fmt: skip

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        """Slack's Socket Mode end: a hello on connect, then events out and acks in. The
        default autoping answers the client's pings."""
        ticket = request.query.get("ticket", "")
        if ticket not in self._tickets:
            return web.json_response({"ok": False, "error": "invalid_ticket"}, status=401)
        self._tickets.discard(ticket)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._websockets.add(ws)
        try:
            await ws.send_json(self._hello(num_connections=len(self._sockets) + 1))
            self._sockets.append(ws)
            self.socket_connections += 1
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    self._receive_ack(message.data)
        finally:
            if ws in self._sockets:
                self._sockets.remove(ws)
            self._websockets.discard(ws)
            for owner, acked in list(self._ack_waiters.values()):
                if owner is ws and not acked.done():
                    acked.set_exception(ConnectionError("socket closed"))
        return ws

    def _receive_ack(self, data: str) -> None:
        at = time.monotonic()
        with contextlib.suppress(ValueError):
            message = json.loads(data)
            if isinstance(message, dict) and isinstance(message.get("envelope_id"), str):
                payload = message.get("payload")
                self.socket_acks.append(SocketAck(message["envelope_id"], payload, at))
                _, acked = self._ack_waiters.get(message["envelope_id"], (None, None))
                if acked is not None and not acked.done():
                    acked.set_result(at)

    # -- Events API: envelopes -------------------------------------------------------------------

    def dm(self, text: str, *, user: str = "U0ALICE", channel: str = "D0ALICE") -> dict[str, Any]:
        return self._envelope(self._user_message(text, user, channel))

    def mention(
        self, text: str, *, user: str = "U0ALICE", channel: str = "C0SUPPORT",
        thread_ts: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        message = self._user_message(f"<@{self.bot_user_id}> {text}", user, channel, thread_ts)
        event = {k: v for k, v in message.items() if k != "channel_type"}
        return self._envelope({**event, "type": "app_mention"})

    def thread_reply(
        self, text: str, *, thread_ts: str, user: str = "U0ALICE", channel: str = "C0SUPPORT"
    ) -> dict[str, Any]:
        return self._envelope(self._user_message(text, user, channel, thread_ts))

    def bot_message(
        self, text: str, *, channel: str = "C0SUPPORT", own: bool = False
    ) -> dict[str, Any]:
        ts = self._new_ts()
        message: dict[str, Any] = {"type": "message", "text": text, "ts": ts}
        if own:
            message.update(user=self.bot_user_id, bot_id=self.bot_id, app_id=APP_ID,
                           bot_profile=self._bot_profile())  # fmt: skip
        else:
            message.update(subtype="bot_message", bot_id=OTHER_BOT_ID, username="other-bot")
        self._remember(channel, message)
        return self._envelope(
            {**message, "channel": channel, "event_ts": ts, "channel_type": _channel_type(channel)}
        )

    def message_changed(
        self, text: str, *, ts: str | None = None, user: str = "U0ALICE",
        channel: str = "C0SUPPORT",
    ) -> dict[str, Any]:  # fmt: skip
        """The user edits a message, by default their latest one in the channel."""
        old = self._find_user_message(channel, user, ts)
        event_ts = self._new_ts()
        new = {**old, "text": text, "edited": {"user": user, "ts": event_ts}}
        new["blocks"] = _rich_text(text)
        self._messages[channel][old["ts"]] = new
        return self._envelope({
            "type": "message", "subtype": "message_changed", "hidden": True, "channel": channel,
            "message": dict(new), "previous_message": old, "ts": event_ts, "event_ts": event_ts,
            "channel_type": _channel_type(channel),
        })  # fmt: skip

    def message_deleted(
        self, *, ts: str | None = None, user: str = "U0ALICE", channel: str = "C0SUPPORT"
    ) -> dict[str, Any]:
        """The user deletes a message, by default their latest one in the channel."""
        old = self._find_user_message(channel, user, ts)
        del self._messages[channel][old["ts"]]
        event_ts = self._new_ts()
        return self._envelope({
            "type": "message", "subtype": "message_deleted", "hidden": True, "channel": channel,
            "deleted_ts": old["ts"], "previous_message": old, "ts": event_ts,
            "event_ts": event_ts, "channel_type": _channel_type(channel),
        })  # fmt: skip

    def _user_message(
        self, text: str, user: str, channel: str, thread_ts: str | None = None
    ) -> dict[str, Any]:
        """A message a user typed, remembered so conversations.replies can return it."""
        ts = self._new_ts()
        message: dict[str, Any] = {
            "type": "message", "user": user, "text": text, "ts": ts, "team": self.team_id,
            "client_msg_id": str(uuid.uuid4()), "blocks": _rich_text(text),
        }  # fmt: skip
        message.update(self._thread_fields(channel, thread_ts))
        self._remember(channel, message)
        return {**message, "channel": channel, "event_ts": ts,
                "channel_type": _channel_type(channel)}  # fmt: skip

    def _find_user_message(self, channel: str, user: str, ts: str | None) -> dict[str, Any]:
        stored = self._messages.get(channel, {})
        if ts is None:
            mine = [t for t, m in stored.items() if m.get("user") == user]
            ts = max(mine, key=_ts_key, default=None)
        if ts is None or ts not in stored:
            raise AssertionError(f"no message {ts or f'from {user}'} in {channel} to change")
        return stored[ts]

    def event(self, event: dict[str, Any]) -> dict[str, Any]:
        """The Events API envelope Slack wraps ``event`` in (any type, as given)."""
        return self._envelope(event)

    def _envelope(self, event: dict[str, Any]) -> dict[str, Any]:
        event_id = f"Ev{self._next_event:04d}"
        self._next_event += 1
        return {
            "token": "test-verification-token", "team_id": self.team_id, "api_app_id": APP_ID,
            "event": event, "type": "event_callback", "event_id": event_id,
            "event_time": int(time.time()),
            "authorizations": [{"enterprise_id": None, "team_id": self.team_id,
                                "user_id": self.bot_user_id, "is_bot": True,
                                "is_enterprise_install": False}],
            "is_ext_shared_channel": False, "event_context": f"4-{uuid.uuid4().hex}",
        }  # fmt: skip

    # -- HTTP ------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        at = time.monotonic()
        method = request.match_info["method"]
        try:
            params = await _read_params(request)
        except ValueError:
            params = {}
        token = _token_of(request, params)
        headers: dict[str, str] = {}
        try:
            body = self._dispatch(method, params, token)
            status = 200
        except ApiError as error:
            status, body = error.status, {"ok": False, "error": error.error, **error.extra}
            if error.retry_after is not None:
                headers["Retry-After"] = str(error.retry_after)
        if status == 429:
            self._answered_429 += 1
        self.calls.append(Call(method, params, at, status, body))
        return web.json_response(body, status=status, headers=headers)

    def _dispatch(self, method: str, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        handler = self._methods.get(method)
        if handler is None:
            raise ApiError("unknown_method", req_method=method)
        wants_app_token = method in APP_TOKEN_METHODS
        if token is not None and _is_app_token(token) != wants_app_token:
            raise ApiError("not_allowed_token_type")
        if token != (self.app_token if wants_app_token else self.bot_token):
            raise ApiError("invalid_auth")
        pending_failures = self._fail_next.get(method)
        if pending_failures:
            raise ApiError("ratelimited", status=429, retry_after=pending_failures.pop(0))
        return {"ok": True, **handler(params)}

    def _new_ts(self) -> str:
        # Slack's ts doubles as a message id, so it must never repeat even within a microsecond
        self._last_ts_us = max(int(time.time() * 1_000_000), self._last_ts_us + 1)
        seconds, micros = divmod(self._last_ts_us, 1_000_000)
        return f"{seconds}.{micros:06d}"

    def _thread_fields(self, channel: str, thread_ts: str | None) -> dict[str, str]:
        """What Slack adds to a reply: its thread and, when known, the parent's author."""
        if thread_ts is None:
            return {}
        parent = self._messages.get(channel, {}).get(thread_ts) or {}
        author = {"parent_user_id": parent["user"]} if parent.get("user") else {}
        return {"thread_ts": thread_ts, **author}

    def _remember(self, channel: str, message: dict[str, Any]) -> None:
        self._messages.setdefault(channel, {})[message["ts"]] = message

    def _bot_profile(self) -> dict[str, Any]:
        return {"id": self.bot_id, "app_id": APP_ID, "name": "frontdesk", "deleted": False,
                "team_id": self.team_id}  # fmt: skip

    # -- rate limits -----------------------------------------------------------------------------

    def _check_post_limit(self, channel: str) -> None:
        last = self._posted_at.get(channel)
        if self.rate_limits and last is not None and time.monotonic() - last < 1:
            raise _rate_limited(last + 1 - time.monotonic())

    def _check_update_limit(self, key: tuple[str, str]) -> None:
        if not self.rate_limits:
            return
        now = time.monotonic()
        while self._updates and now - self._updates[0] >= 60:
            self._updates.popleft()
        waits = []
        if len(self._updates) >= UPDATES_PER_MINUTE:
            waits.append(self._updates[-UPDATES_PER_MINUTE] + 60 - now)
        last = self._updated_at.get(key)
        if last is not None and now - last < 1:
            waits.append(last + 1 - now)
        if waits:
            raise _rate_limited(max(waits))

    # -- Web API methods -------------------------------------------------------------------------

    def _connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        ticket = str(uuid.uuid4())
        self._tickets.add(ticket)
        return {"url": f"ws://127.0.0.1:{self.port}/socket?ticket={ticket}"}

    def _auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": "https://frontdesk-test.slack.com/", "team": "Frontdesk Test",
            "user": "frontdesk", "team_id": self.team_id, "user_id": self.bot_user_id,
            "bot_id": self.bot_id, "is_enterprise_install": False,
        }  # fmt: skip

    def _message_content(self, params: dict[str, Any]) -> tuple[str, Any]:
        text, blocks = params.get("text"), params.get("blocks")
        if not text and not blocks:
            raise ApiError("no_text")
        text = str(text or "")
        if len(text) > MAX_TEXT_CHARS:
            raise ApiError("msg_too_long")
        return text, _check_blocks(blocks) if blocks else None

    def _post_message(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel") or "")
        if not channel or channel in self.missing_channels:
            raise ApiError("channel_not_found")
        if channel in self.channels_without_bot:
            raise ApiError("not_in_channel")
        text, blocks = self._message_content(params)
        self._check_post_limit(channel)
        ts = self._new_ts()
        message: dict[str, Any] = {
            "type": "message", "text": text, "user": self.bot_user_id, "bot_id": self.bot_id,
            "app_id": APP_ID, "ts": ts, "team": self.team_id, "bot_profile": self._bot_profile(),
        }  # fmt: skip
        thread_ts = params.get("thread_ts")
        message.update(self._thread_fields(channel, str(thread_ts) if thread_ts else None))
        if blocks:
            message["blocks"] = blocks
        self._remember(channel, message)
        self._bot_posts[(channel, ts)] = {
            "ts": ts, "text": text, "thread_ts": message.get("thread_ts"), "blocks": blocks,
            "texts": [text], "over_4000": len(text) > DISPLAY_TEXT_CHARS,
        }  # fmt: skip
        if self.rate_limits:
            self._posted_at[channel] = time.monotonic()
        return {"channel": channel, "ts": ts, "message": message}

    def _update(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(params.get("channel") or ""), str(params.get("ts") or "")
        if not channel:
            raise ApiError("channel_not_found")
        stored = self._messages.get(channel, {}).get(ts)
        if stored is None:
            raise ApiError("message_not_found")
        post = self._bot_posts.get((channel, ts))
        if post is None:
            raise ApiError("cant_update_message")
        text, blocks = self._message_content(params)
        self._check_update_limit((channel, ts))
        stored.update(text=text, edited={"user": self.bot_user_id, "ts": self._new_ts()})
        if blocks:
            stored["blocks"] = blocks
        post.update(text=text, blocks=blocks or post["blocks"])
        post["texts"].append(text)
        post["over_4000"] = post["over_4000"] or len(text) > DISPLAY_TEXT_CHARS
        if self.rate_limits:
            now = time.monotonic()
            self._updates.append(now)
            self._updated_at[(channel, ts)] = now
        message = {k: stored[k] for k in ("type", "text", "user", "bot_id", "app_id", "team")}
        return {"channel": channel, "ts": ts, "text": text, "message": message}

    def _delete(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(params.get("channel") or ""), str(params.get("ts") or "")
        if ts not in self._messages.get(channel, {}):
            raise ApiError("message_not_found")
        if (channel, ts) not in self._bot_posts:
            raise ApiError("cant_delete_message")
        del self._messages[channel][ts]
        del self._bot_posts[(channel, ts)]
        return {"channel": channel, "ts": ts}

    def _conversation_info(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel") or "")
        if not channel or channel in self.missing_channels:
            raise ApiError("channel_not_found")
        return {"channel": {
            "id": channel, "name": channel.lower(), "is_channel": channel.startswith("C"),
            "is_im": channel.startswith("D"), "is_member": channel not in self.channels_without_bot,
        }}  # fmt: skip

    def _users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        user_id = str(params.get("user") or "")
        self.user_lookups[user_id] += 1
        if user_id not in self._users:
            raise ApiError("user_not_found")
        user = self._users[user_id]
        return {"user": {**user, "profile": dict(user["profile"])}}

    def _replies(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(params.get("channel") or ""), str(params.get("ts") or "")
        if channel not in self._messages:
            raise ApiError("channel_not_found")
        stored = self._messages[channel]
        # A reply's ts finds its whole thread, as Slack's "a message in the thread" allows
        root = stored[ts].get("thread_ts", ts) if ts in stored else ts
        replies = sorted(
            (m for m in stored.values() if m.get("thread_ts") == root and m["ts"] != root),
            key=lambda m: _ts_key(m["ts"]),
        )
        if root not in stored and not replies:
            raise ApiError("thread_not_found")
        thread = [dict(m) for m in replies]
        if root in stored:
            parent = dict(stored[root])
            if replies:
                parent.update(
                    thread_ts=root, reply_count=len(replies), latest_reply=replies[-1]["ts"],
                    reply_users=sorted({m.get("user") or m.get("bot_id") for m in replies}),
                )  # fmt: skip
            thread.insert(0, parent)
        return {"messages": thread, "has_more": False, "response_metadata": {"next_cursor": ""}}
