"""A local stand-in for the Telegram Bot API, for tests that run the real python-telegram-bot.

This module owns `FakeTelegram`: an aiohttp server on 127.0.0.1 that answers the Bot API methods
frontdesk uses (getMe, getUpdates, sendMessage, editMessageText, deleteMessage, sendChatAction,
setMyCommands, setWebhook, deleteWebhook) with Telegram's response shapes and its limits: message length in
UTF-16 units after entity parsing, strict HTML parse mode, "message is not modified", the per-chat
flood limits and the bot's 30 calls a second that answer 429, and the 409 that ends a getUpdates
call when another one comes. Tests inject user traffic with the helper methods and read
back what the bot did through `calls`, `messages_in` and `wait_for`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from ._server import FakeServer

MAX_TEXT_UTF16 = 4096
BOT_PER_SECOND = 30  # sends and edits a bot may make a second, over all its chats
# Form fields that are strings even when they look like JSON ("123", "true"), since PTB sends
# strings unquoted and only JSON-encodes the other types.
_STRING_FIELDS = {"text", "parse_mode", "action", "url", "secret_token", "caption", "ip_address"}
_HTML_TAGS = {
    "b": "bold", "strong": "bold", "i": "italic", "em": "italic", "u": "underline",
    "ins": "underline", "s": "strikethrough", "strike": "strikethrough", "del": "strikethrough",
    "tg-spoiler": "spoiler", "span": "spoiler", "a": "text_link", "code": "code", "pre": "pre",
    "blockquote": "blockquote", "tg-emoji": "custom_emoji",
}  # fmt: skip
_NAMED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
_ENTITY_RE = re.compile(r"&(#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[a-zA-Z]+);")
_START_TAG_RE = re.compile(r"<([^\s>/]*)([^>]*)>")
_END_TAG_RE = re.compile(r"</([^\s>]*)\s*>")
_ATTR_RE = re.compile(r"""([a-zA-Z][\w-]*)(?:\s*=\s*("[^"]*"|'[^']*'|[^\s"'>]+))?""")
_NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are"
    " exactly the same as a current content and reply markup of the message"
)


@dataclass
class Call:
    """One request the fake answered, rejected ones included."""

    method: str
    params: dict[str, Any]
    at: float
    status: int
    result_or_error: Any


@dataclass(frozen=True)
class Webhook:
    url: str
    secret_token: str | None


class ApiError(Exception):
    def __init__(self, status: int, description: str, parameters: dict | None = None) -> None:
        super().__init__(description)
        self.status, self.description, self.parameters = status, description, parameters


def _too_many(retry_after: int) -> ApiError:
    return ApiError(
        429, f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after}
    )


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def parse_html(source: str) -> tuple[str, list[dict[str, Any]]]:
    """Telegram's HTML parse mode: the visible text and its entities (offsets in UTF-16 units).
    Raises ValueError with Telegram's reason on markup Telegram would refuse."""
    out: list[str] = []
    pos = 0  # UTF-16 offset of the visible text written so far
    open_tags: list[tuple[str, dict[str, Any]]] = []
    entities: list[dict[str, Any]] = []
    i = 0
    while i < len(source):
        ch = source[i]
        # Only markup needs the position, and working it out per character would be quadratic
        at = f"at byte offset {len(source[:i].encode())}" if ch in "<&" else ""
        if ch == "&":
            match = _ENTITY_RE.match(source, i)
            decoded = _decode_entity(match.group(1)) if match else None
            if match is None or decoded is None:
                raise ValueError(f'Unsupported HTML entity or unescaped "&" {at}')
            out.append(decoded)
            pos += utf16_len(decoded)
            i = match.end()
        elif ch == "<" and source.startswith("</", i):
            match = _END_TAG_RE.match(source, i)
            if match is None:
                raise ValueError(f"Unclosed end tag {at}")
            if not open_tags:
                raise ValueError(f"Unexpected end tag {at}")
            tag, entity = open_tags.pop()
            if match.group(1).lower() != tag:
                raise ValueError(
                    f'Unmatched end tag {at}, expected "</{tag}>", found "</{match.group(1)}>"'
                )
            entity["length"] = pos - entity["offset"]
            i = match.end()
        elif ch == "<":
            match = _START_TAG_RE.match(source, i)
            if match is None:
                raise ValueError(f"Unclosed start tag {at}")
            tag = match.group(1).lower()
            attrs = {k.lower(): (v or "").strip("\"'") for k, v in _ATTR_RE.findall(match.group(2))}
            entity = _start_entity(tag, attrs, pos, at)
            if tag == "code" and open_tags and open_tags[-1][0] == "pre":
                # Telegram folds <pre><code class="language-x"> into one pre entity
                entity["type"] = ""
                if attrs.get("class", "").startswith("language-"):
                    open_tags[-1][1]["language"] = attrs["class"].removeprefix("language-")
            open_tags.append((tag, entity))
            entities.append(entity)  # at its start, so outer entities come first
            i = match.end()
        else:
            out.append(ch)
            pos += utf16_len(ch)
            i += 1
    if open_tags:
        raise ValueError(f'Can\'t find end tag corresponding to start tag "{open_tags[-1][0]}"')
    kept = [e for e in entities if e["type"] and e["length"] > 0]
    return "".join(out), sorted(kept, key=lambda e: e["offset"])


def _decode_entity(name: str) -> str | None:
    if name.startswith(("#x", "#X")):
        code = int(name[2:], 16)
    elif name.startswith("#"):
        code = int(name[1:])
    else:
        return _NAMED_ENTITIES.get(name)
    return chr(code) if 0 < code <= 0x10FFFF else None


def _start_entity(tag: str, attrs: dict[str, str], offset: int, at: str) -> dict[str, Any]:
    if tag not in _HTML_TAGS:
        raise ValueError(f'Unsupported start tag "{tag}" {at}')
    entity: dict[str, Any] = {"type": _HTML_TAGS[tag], "offset": offset}
    if tag == "span" and attrs.get("class") != "tg-spoiler":
        raise ValueError(f'Tag "span" must have class "tg-spoiler" {at}')
    if tag == "a":
        # Telegram drops a link without href instead of refusing it; "" marks "no entity"
        entity["type"] = "text_link" if attrs.get("href") else ""
        entity["url"] = attrs.get("href", "")
    if tag == "tg-emoji":
        if not attrs.get("emoji-id"):
            raise ValueError(f'Tag "tg-emoji" must have attribute "emoji-id" {at}')
        entity["custom_emoji_id"] = attrs["emoji-id"]
    if tag == "blockquote" and "expandable" in attrs:
        entity["type"] = "expandable_blockquote"
    return entity


def _strip(text: str, entities: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Telegram trims the text's outer whitespace; entities shift and shrink with it."""
    stripped = text.strip()
    lead, size = utf16_len(text[: len(text) - len(text.lstrip())]), utf16_len(stripped)
    kept = []
    for entity in entities:
        start = max(entity["offset"] - lead, 0)
        end = min(entity["offset"] + entity["length"] - lead, size)
        if end > start:
            kept.append({**entity, "offset": start, "length": end - start})
    return stripped, kept


def _user(user_id: int, username: str, first_name: str) -> dict[str, Any]:
    return {"id": user_id, "is_bot": False, "first_name": first_name, "username": username}


def _without_reply(message: dict[str, Any]) -> dict[str, Any]:
    """Telegram nests one level only: a replied-to message comes without its own reply."""
    return {k: v for k, v in message.items() if k != "reply_to_message"}


def _decode_param(name: str, value: Any) -> Any:
    if not isinstance(value, str) or name in _STRING_FIELDS:
        return value
    try:
        decoded = json.loads(value)
    except ValueError:
        return value
    return value if isinstance(decoded, str) else decoded


async def _read_params(request: web.Request) -> dict[str, Any]:
    raw: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        # A JSON body carries typed values already, which _decode_param leaves alone
        with contextlib.suppress(ValueError):
            body = await request.json()
            raw.update(body if isinstance(body, dict) else {})
    elif request.can_read_body:
        for key, value in (await request.post()).items():
            raw[key] = value if isinstance(value, str) else f"<file {value.filename}>"
    return {k: _decode_param(k, v) for k, v in raw.items()}


def _inline_keyboard(params: dict[str, Any]) -> dict[str, Any] | None:
    """A message's reply_markup, when it is an inline keyboard, checked as Telegram checks it:
    each button has a text and callback_data of 1 to 64 bytes."""
    markup = params.get("reply_markup")
    if markup is None:
        return None
    rows = markup.get("inline_keyboard") if isinstance(markup, dict) else None
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise ApiError(400, "Bad Request: can't parse inline keyboard button")
    for row in rows:
        for button in row:
            data = str(button.get("callback_data") or "")
            if not button.get("text"):
                raise ApiError(
                    400, "Bad Request: text buttons are unallowed in the inline keyboard"
                )
            if not 1 <= len(data.encode()) <= 64:
                raise ApiError(400, "Bad Request: BUTTON_DATA_INVALID")
    return markup


def _chat_id(params: dict[str, Any]) -> int:
    value = params.get("chat_id")
    if value is None or value == "":
        raise ApiError(400, "Bad Request: chat_id is empty")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ApiError(400, "Bad Request: chat not found") from None


class FakeTelegram(FakeServer):
    """The Bot API on 127.0.0.1; point PTB at `base_url`."""

    ROUTE = "/bot{token}/{method}"

    def __init__(
        self,
        token: str = "123456:TEST",
        bot_username: str = "frontdesk_test_bot",
        rate_limits: bool = True,
    ) -> None:
        self.token, self.bot_username, self.rate_limits = token, bot_username, rate_limits
        self.bot_id = int(token.split(":", 1)[0]) if token.split(":", 1)[0].isdigit() else 1
        super().__init__()
        self.calls: list[Call] = []
        self.webhook: Webhook | None = None
        self.commands: list[dict[str, Any]] | None = None
        self._updates: list[dict[str, Any]] = []
        self._next_update_id = 1
        self._next_message_id: dict[int, int] = {}
        self._messages: dict[tuple[int, int], dict[str, Any]] = {}
        # The bot's own messages: current text, parse mode, entities and every text they had
        self._bot_messages: dict[tuple[int, int], dict[str, Any]] = {}
        self._accepted_at: dict[int, deque[float]] = {}
        self._bot_wide: deque[float] = deque()  # every chat's accepted calls, the last second
        self._wakeup = asyncio.Event()
        self._closing = False
        # The getUpdates call waiting now, if any: a second call ends it with a 409, as Telegram
        # does ("terminated by other getUpdates request"). ``conflicts`` counts the 409s sent to
        # a getUpdates caller still there (this one, and polling while a webhook is set)
        self._long_poll: dict[str, bool] | None = None
        self.conflicts = 0
        self._methods: dict[str, Callable[[dict[str, Any]], Any]] = {
            "getme": self._get_me, "getupdates": self._get_updates,
            "sendmessage": self._send_message, "editmessagetext": self._edit_message_text,
            "deletemessage": self._delete_message,
            "sendchataction": self._send_chat_action, "setmycommands": self._set_my_commands,
            "setwebhook": self._set_webhook, "deletewebhook": self._delete_webhook,
            "editmessagereplymarkup": self._edit_reply_markup,
            "createforumtopic": self._create_forum_topic,
            "getchat": self._get_chat, "getchatmember": self._get_chat_member,
            "answercallbackquery": self._answer_callback_query,
        }  # fmt: skip
        self._callbacks: dict[str, dict[str, Any] | None] = {}  # query id -> its answer
        # forum supergroups (made by ``forum``): chat id -> {topic id: name}
        self.topics: dict[int, dict[int, str]] = {}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    # -- lifecycle -------------------------------------------------------------------------------

    async def stop(self) -> None:
        # Long polls still waiting would hold up the server's shutdown, so answer them first
        self._closing = True
        self._wake()
        await super().stop()

    # -- test controls and queries ---------------------------------------------------------------

    def _method_key(self, method: str) -> str:
        return method.lower()

    def _describe(self, call: Call) -> str:
        return f"{call.method} chat={call.params.get('chat_id')} -> {call.status}"

    def calls_to(self, method: str, chat_id: int | None = None) -> list[Call]:
        return [
            c
            for c in self.calls
            if c.method.lower() == method.lower()
            and (chat_id is None or str(c.params.get("chat_id")) == str(chat_id))
        ]

    def messages_in(self, chat_id: int) -> list[dict[str, Any]]:
        """The bot's messages in the chat, oldest first: `message_id`, current `text`,
        `parse_mode`, `entities`, `message_thread_id` and `texts` (every text it had)."""
        found = sorted((mid, m) for (chat, mid), m in self._bot_messages.items() if chat == chat_id)
        return [{**m, "texts": list(m["texts"])} for _, m in found]

    async def post_webhook(
        self, update: dict[str, Any], *, secret: str | None, url: str | None = None
    ) -> int:
        """POST the update as Telegram does, to the webhook set (or to ``url``: one of several
        gateways behind a load balancer). Returns the HTTP status."""
        if self.webhook is None:
            raise AssertionError("no webhook is set; the bot never called setWebhook")
        headers = {} if secret is None else {"X-Telegram-Bot-Api-Secret-Token": secret}
        async with (
            aiohttp.ClientSession() as session,
            session.post(url or self.webhook.url, json=update, headers=headers) as response,
        ):
            return response.status

    # -- injected traffic ------------------------------------------------------------------------

    def push(self, update: dict[str, Any]) -> dict[str, Any]:
        self._updates.append(update)
        self._wake()
        return update

    def private_message(
        self, text: str, *, user_id: int = 1001, username: str = "alice", first_name: str = "Alice"
    ) -> dict[str, Any]:
        user = _user(user_id, username, first_name)
        return self._queue("message", self._user_message(user_id, user, text))

    def private_command(
        self, command: str, args: str = "", *, user_id: int = 1001, username: str = "alice",
        first_name: str = "Alice",
    ) -> dict[str, Any]:  # fmt: skip
        text = "/" + command.lstrip("/") + (f" {args}" if args else "")
        return self.private_message(text, user_id=user_id, username=username, first_name=first_name)

    def group_message(
        self, text: str, *, chat_id: int = -100200, user_id: int = 1002, username: str = "bob",
        first_name: str = "Bob", mention_bot: bool = False,
        reply_to_bot_message_id: int | None = None, message_thread_id: int | None = None,
        is_topic_message: bool = False,
    ) -> dict[str, Any]:  # fmt: skip
        mention = f"@{self.bot_username}" if mention_bot else ""
        message = self._user_message(chat_id, _user(user_id, username, first_name), text, mention)
        if reply_to_bot_message_id is not None:
            # A reply to a message this fake never saw still gets a plausible bot message
            unseen = {"message_id": reply_to_bot_message_id, "from": self._bot_user(),
                      "chat": self._chat(chat_id), "date": int(time.time()), "text": ""}  # fmt: skip
            replied = self._messages.get((chat_id, reply_to_bot_message_id), unseen)
            message["reply_to_message"] = _without_reply(replied)
        if message_thread_id is not None:
            message["message_thread_id"] = message_thread_id
        if is_topic_message:
            message["is_topic_message"] = True
        return self._queue("message", message)

    def non_text_message(
        self, kind: str = "photo", *, chat_id: int | None = None, user_id: int = 1001,
        username: str = "alice", first_name: str = "Alice", caption: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        ids = {"file_id": f"{kind}-{self._next_update_id}", "file_unique_id": f"u{kind}"}
        content: dict[str, Any] = {
            "photo": [{**ids, "width": 90, "height": 90, "file_size": 1200}],
            "sticker": {**ids, "type": "regular", "width": 512, "height": 512,
                        "is_animated": False, "is_video": False, "emoji": "👍"},
            "voice": {**ids, "duration": 3, "mime_type": "audio/ogg"},
            "document": {**ids, "file_name": "notes.pdf", "mime_type": "application/pdf"},
        }  # fmt: skip
        chat = user_id if chat_id is None else chat_id
        message = self._user_message(chat, _user(user_id, username, first_name), None)
        message[kind] = content[kind]
        if caption:
            message["caption"] = caption
        return self._queue("message", message)

    def edited_message(
        self, text: str, *, message_id: int | None = None, chat_id: int | None = None,
        user_id: int = 1001, username: str = "alice", first_name: str = "Alice",
    ) -> dict[str, Any]:  # fmt: skip
        """An `edited_message` update for the user's message, by default their latest one."""
        chat = user_id if chat_id is None else chat_id
        if message_id is None:
            mine = [
                k[1]
                for k, m in self._messages.items()
                if k[0] == chat and m["from"]["id"] == user_id
            ]
            message_id = max(mine, default=None)
        user = _user(user_id, username, first_name)
        message = self._user_message(chat, user, text, message_id=message_id)
        message["edit_date"] = message["date"]
        return self._queue("edited_message", message)

    def _user_message(
        self, chat_id: int, user: dict[str, Any], text: str | None, mention: str = "",
        message_id: int | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """A message from a user, remembered so the bot can reply to it; entities as Telegram
        would mark them (the bot mention, a leading command)."""
        message: dict[str, Any] = {
            "message_id": message_id or self._new_message_id(chat_id),
            "from": user,
            "chat": self._chat(chat_id, user),
            "date": int(time.time()),
        }
        if text is not None:
            message["text"] = f"{mention} {text}" if mention else text
            entities = (
                [{"type": "mention", "offset": 0, "length": utf16_len(mention)}] if mention else []
            )
            if text.startswith("/"):
                start, command = utf16_len(f"{mention} ") if mention else 0, text.split()[0]
                entities.append(
                    {"type": "bot_command", "offset": start, "length": utf16_len(command)}
                )
            if entities:
                message["entities"] = entities
        self._messages[(chat_id, message["message_id"])] = message
        return message

    def _queue(self, kind: str, message: dict[str, Any]) -> dict[str, Any]:
        update = {"update_id": self._next_update_id, kind: message}
        self._next_update_id += 1
        return self.push(update)

    # -- HTTP ------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        at = time.monotonic()
        method = request.match_info["method"]
        try:
            params = await _read_params(request)
        except ValueError:
            params = {}
        except ConnectionResetError:  # the client gave up on the call (a cancelled send)
            return web.Response(status=499)
        try:
            if request.match_info["token"] != self.token:
                raise ApiError(401, "Unauthorized")
            result = await self._dispatch(method, params)
            status, body = 200, {"ok": True, "result": result}
        except ApiError as error:
            status = error.status
            body = {"ok": False, "error_code": status, "description": error.description}
            if error.parameters:
                body["parameters"] = error.parameters
            result = body
        if status == 429:
            self._answered_429 += 1
        if status == 409 and method.lower() == "getupdates":
            if request.transport is None or request.transport.is_closing():
                status = 499  # a caller that is gone (killed) sees no conflict
            else:
                self.conflicts += 1
        self.calls.append(Call(method, params, at, status, result))
        return web.json_response(body, status=status)

    async def _dispatch(self, method: str, params: dict[str, Any]) -> Any:
        handler = self._methods.get(method.lower())
        if handler is None:
            raise ApiError(404, "Not Found: method not found")
        pending_failures = self._fail_next.get(method.lower())
        if pending_failures:
            raise _too_many(pending_failures.pop(0))
        try:
            result = handler(params)
            return await result if asyncio.iscoroutine(result) else result
        except (TypeError, ValueError, AttributeError) as error:
            # A malformed parameter (e.g. offset="x") is the caller's fault, as on Telegram
            raise ApiError(400, f"Bad Request: wrong parameter in request: {error}") from None

    def _wake(self) -> None:
        # Each waiter holds the event it started on, so a fresh one is needed for the next wait
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    def _bot_user(self) -> dict[str, Any]:
        return {"id": self.bot_id, "is_bot": True, "first_name": "Frontdesk Test",
                "username": self.bot_username}  # fmt: skip

    def _chat(self, chat_id: int, user: dict[str, Any] | None = None) -> dict[str, Any]:
        if chat_id > 0:
            names = {k: user[k] for k in ("first_name", "username")} if user else {}
            return {"id": chat_id, "type": "private", **names}
        kind = "supergroup" if str(chat_id).startswith("-100") else "group"
        return {"id": chat_id, "type": kind, "title": "Test group"}

    def _new_message_id(self, chat_id: int) -> int:
        self._next_message_id[chat_id] = self._next_message_id.get(chat_id, 0) + 1
        return self._next_message_id[chat_id]

    def _check_flood(self, chat_id: int) -> None:
        if not self.rate_limits:
            return
        now = time.monotonic()
        accepted = self._accepted_at.setdefault(chat_id, deque())
        while accepted and now - accepted[0] >= 60:
            accepted.popleft()
        waits = [accepted[-1] + 1 - now] if accepted and now - accepted[-1] < 1 else []
        if chat_id < 0 and len(accepted) >= 20:
            waits.append(accepted[-20] + 60 - now)
        while self._bot_wide and now - self._bot_wide[0] >= 1:
            self._bot_wide.popleft()
        if len(self._bot_wide) >= BOT_PER_SECOND:  # the bot's 30 a second, over all chats
            waits.append(self._bot_wide[0] + 1 - now)
        if waits:
            raise _too_many(max(1, math.ceil(max(waits))))

    def _note_accepted(self, chat_id: int) -> None:
        if self.rate_limits:
            self._accepted_at.setdefault(chat_id, deque()).append(time.monotonic())
            self._bot_wide.append(time.monotonic())

    # -- Bot API methods -------------------------------------------------------------------------

    def _get_me(self, params: dict[str, Any]) -> dict[str, Any]:
        return {**self._bot_user(), "can_join_groups": True, "can_read_all_group_messages": False,
                "supports_inline_queries": False}  # fmt: skip

    async def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        if self.webhook is not None:
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active;"
                " use deleteWebhook to delete the webhook first",
            )
        offset = int(params.get("offset") or 0)
        limit = min(max(int(params.get("limit") or 100), 1), 100)
        deadline = time.monotonic() + max(float(params.get("timeout") or 0), 0.0)
        if self._long_poll is not None:  # another caller is waiting: its call ends
            self._long_poll["terminated"] = True
            self._wake()
        me = self._long_poll = {"terminated": False}
        try:
            while True:
                if me["terminated"]:
                    # A caller that gave up on this call (cancelled it, then asked again on
                    # another connection) closes it: a moment lets that close arrive, so
                    # _handle can tell an abandoned call from a second poller
                    await asyncio.sleep(0.05)
                    raise ApiError(
                        409,
                        "Conflict: terminated by other getUpdates request; make sure that only"
                        " one bot instance is running",
                    )
                if offset < 0:
                    self._updates = self._updates[offset:]
                elif offset > 0:
                    self._updates = [u for u in self._updates if u["update_id"] >= offset]
                remaining = deadline - time.monotonic()
                if self._updates or remaining <= 0 or self._closing:
                    return self._updates[:limit]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
        finally:
            if self._long_poll is me:
                self._long_poll = None

    def _message_text(self, params: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        text, parse_mode = str(params.get("text") or ""), params.get("parse_mode")
        entities = params.get("entities") if isinstance(params.get("entities"), list) else []
        if not entities and isinstance(parse_mode, str) and parse_mode.lower() == "html":
            try:
                text, entities = parse_html(text)
            except ValueError as error:
                raise ApiError(400, f"Bad Request: can't parse entities: {error}") from None
        elif parse_mode and not entities:
            raise ApiError(400, "Bad Request: unsupported parse_mode (this fake parses HTML only)")
        text, entities = _strip(text, entities)
        if not text:
            raise ApiError(400, "Bad Request: message text is empty")
        if utf16_len(text) > MAX_TEXT_UTF16:
            raise ApiError(400, "Bad Request: message is too long")
        return text, entities

    def _send_message(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = _chat_id(params)
        text, entities = self._message_text(params)
        reply = params.get("reply_parameters")
        reply = reply if isinstance(reply, dict) else {}
        reply_to = reply.get("message_id") or params.get("reply_to_message_id")
        replied = self._messages.get((chat_id, int(reply_to))) if reply_to else None
        if reply_to and replied is None and not reply.get("allow_sending_without_reply"):
            raise ApiError(400, "Bad Request: message to be replied not found")
        self._check_flood(chat_id)
        message: dict[str, Any] = {
            "message_id": self._new_message_id(chat_id),
            "from": self._bot_user(),
            "chat": self._chat(chat_id),
            "date": int(time.time()),
            "text": text,
        }
        thread_id = params.get("message_thread_id")
        if thread_id is not None:
            if chat_id in self.topics and int(thread_id) not in self.topics[chat_id]:
                raise ApiError(400, "Bad Request: message thread not found")
            message["message_thread_id"] = int(thread_id)
        if entities:
            message["entities"] = entities
        if replied is not None:
            message["reply_to_message"] = _without_reply(replied)
        markup = _inline_keyboard(params)
        if markup is not None:
            message["reply_markup"] = markup
        self._note_accepted(chat_id)
        key = (chat_id, message["message_id"])
        self._messages[key] = message
        self._bot_messages[key] = {
            "message_id": key[1], "text": text, "parse_mode": params.get("parse_mode"),
            "entities": entities, "message_thread_id": message.get("message_thread_id"),
            "texts": [text], "reply_markup": markup,
        }  # fmt: skip
        return message

    def _edit_message_text(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = _chat_id(params)
        text, entities = self._message_text(params)
        key = (chat_id, int(params.get("message_id") or 0))
        if key not in self._messages:
            raise ApiError(400, "Bad Request: message to edit not found")
        stored = self._bot_messages.get(key)
        if stored is None:
            raise ApiError(400, "Bad Request: message can't be edited")
        markup = _inline_keyboard(params)
        # Telegram compares the resulting content, so plain "x" and HTML "x" are the same; an
        # edit without reply_markup removes the buttons
        if (
            stored["text"] == text
            and stored["entities"] == entities
            and (stored["reply_markup"] == markup)
        ):
            raise ApiError(400, _NOT_MODIFIED)
        self._check_flood(chat_id)
        self._note_accepted(chat_id)
        stored.update(text=text, entities=entities, parse_mode=params.get("parse_mode"),
                      reply_markup=markup)  # fmt: skip
        stored["texts"].append(text)
        message = {k: v for k, v in self._messages[key].items() if k != "entities"}
        message.update(
            text=text, edit_date=int(time.time()), **({"entities": entities} if entities else {})
        )
        self._messages[key] = message
        return message

    def forum(self, chat_id: int) -> None:
        """Make ``chat_id`` a supergroup with topics, where the bot is an admin that may
        manage them."""
        self.topics.setdefault(chat_id, {})

    def topic_messages(self, chat_id: int, thread: int) -> list[str]:
        """The bot's messages in one forum topic, oldest first."""
        return [
            m["text"] for (chat, _id), m in sorted(self._bot_messages.items())
            if chat == chat_id and m.get("message_thread_id") == thread
        ]  # fmt: skip

    def _get_chat(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = _chat_id(params)
        kind = "private" if chat_id > 0 else "supergroup"
        found: dict[str, Any] = {
            "id": chat_id, "type": kind, "accent_color_id": 0, "max_reaction_count": 11,
            "accepted_gift_types": {"unlimited_gifts": False, "limited_gifts": False,
                                    "unique_gifts": False, "premium_subscription": False,
                                    "gifts_from_channels": False},
        }  # fmt: skip
        if kind == "supergroup":
            found["title"] = f"Group {chat_id}"
            if chat_id in self.topics:
                found["is_forum"] = True
        return found

    def _get_chat_member(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = _chat_id(params)
        user_id = int(params.get("user_id") or 0)
        if user_id != self.bot_id:
            return {"status": "member", "user": _user(user_id, f"u{user_id}", "User")}
        rights = {
            "can_be_edited": False, "is_anonymous": False, "can_manage_chat": True,
            "can_delete_messages": True, "can_manage_video_chats": False,
            "can_restrict_members": False, "can_promote_members": False,
            "can_change_info": False, "can_invite_users": True, "can_post_stories": False,
            "can_edit_stories": False, "can_delete_stories": False,
            "can_manage_topics": chat_id in self.topics,
        }  # fmt: skip
        return {"status": "administrator", "user": self._bot_user(), **rights}

    def _create_forum_topic(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = _chat_id(params)
        name = str(params.get("name") or "")
        if chat_id not in self.topics:
            raise ApiError(400, "Bad Request: the chat is not a forum")
        if not 1 <= len(name) <= 128:
            raise ApiError(400, "Bad Request: TOPIC_NAME_INVALID")
        thread = self._new_message_id(chat_id)  # a topic's id is its creation message's
        self.topics[chat_id][thread] = name
        return {"message_thread_id": thread, "name": name, "icon_color": 7322096}

    def _edit_reply_markup(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = _chat_id(params)
        key = (chat_id, int(params.get("message_id") or 0))
        stored = self._bot_messages.get(key)
        if stored is None:
            raise ApiError(400, "Bad Request: message to edit not found")
        markup = _inline_keyboard(params)
        if stored["reply_markup"] == markup:
            raise ApiError(400, _NOT_MODIFIED)
        self._check_flood(chat_id)
        self._note_accepted(chat_id)
        stored["reply_markup"] = markup
        return self._messages[key]

    def _answer_callback_query(self, params: dict[str, Any]) -> bool:
        query_id = str(params.get("callback_query_id") or "")
        if query_id not in self._callbacks:
            raise ApiError(400, "Bad Request: query is too old and response timeout expired")
        if self._callbacks[query_id] is not None:
            raise ApiError(400, "Bad Request: query ID is invalid")  # answered already
        text = params.get("text")
        if text is not None and len(str(text)) > 200:
            raise ApiError(400, "Bad Request: MESSAGE_TOO_LONG")
        self._callbacks[query_id] = {"text": text, "show_alert": params.get("show_alert")}
        return True

    # -- inline keyboards ------------------------------------------------------------------------

    def buttons_of(self, chat_id: int, message_id: int) -> list[dict[str, Any]]:
        """The inline keyboard's buttons on one of the bot's messages, as it is now."""
        markup = self._bot_messages[(chat_id, message_id)].get("reply_markup") or {}
        return [button for row in markup.get("inline_keyboard", []) for button in row]

    def press(
        self, chat_id: int, message_id: int, data: str, *, user_id: int = 1001,
        username: str = "alice", first_name: str = "Alice",
    ) -> str:  # fmt: skip
        """A user presses the inline button whose callback_data is ``data``: a callback_query
        update. Returns the query's id, which the bot must answer (``answers``)."""
        if data not in [b.get("callback_data") for b in self.buttons_of(chat_id, message_id)]:
            raise AssertionError(f"message {message_id} has no button {data!r}")
        query_id = str(uuid.uuid4().int % 10**18)
        self._callbacks[query_id] = None
        message = self._messages[(chat_id, message_id)]
        query = {
            "id": query_id, "from": _user(user_id, username, first_name),
            "message": message, "chat_instance": str(chat_id), "data": data,
        }  # fmt: skip
        self._queue("callback_query", query)
        return query_id

    def answers(self) -> dict[str, dict[str, Any] | None]:
        """Each callback query pressed, and the bot's answer to it (None: not answered)."""
        return dict(self._callbacks)

    def _delete_message(self, params: dict[str, Any]) -> bool:
        chat_id = _chat_id(params)
        key = (chat_id, int(params.get("message_id") or 0))
        if key not in self._messages:
            raise ApiError(400, "Bad Request: message to delete not found")
        del self._messages[key]
        self._bot_messages.pop(key, None)
        return True

    def _send_chat_action(self, params: dict[str, Any]) -> bool:
        _chat_id(params)
        if not params.get("action"):
            raise ApiError(400, "Bad Request: wrong parameter action in request")
        return True

    def _set_my_commands(self, params: dict[str, Any]) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list):
            raise ApiError(400, "Bad Request: can't parse commands JSON object")
        self.commands = commands
        return True

    def _set_webhook(self, params: dict[str, Any]) -> bool:
        url = str(params.get("url") or "")
        secret = params.get("secret_token")
        if secret is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", str(secret)):
            raise ApiError(400, "Bad Request: secret token contains unallowed characters")
        # An empty URL is how the Bot API spells "remove the webhook"
        self.webhook = Webhook(url, None if secret is None else str(secret)) if url else None
        if params.get("drop_pending_updates") is True:
            self._updates.clear()
        return True

    def _delete_webhook(self, params: dict[str, Any]) -> bool:
        self.webhook = None
        if params.get("drop_pending_updates") is True:
            self._updates.clear()
        return True
