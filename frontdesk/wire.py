"""The types every side shares, and the one place they are (de)serialised for the queue.

A queue entry is a mapping ``{"v": <version>, "d": <json>}``. ``v`` lets gateways and workers of
adjacent versions coexist during a rolling deploy: a reader accepts every version up to its own and
ignores fields it does not know. Bump ``WIRE_VERSION`` when a field changes meaning, not when one is
added with a default.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypeVar

import orjson

WIRE_VERSION = 1

Role = Literal["system", "user", "assistant"]


class ChatMessage(NamedTuple):
    """One message of a prompt, as a backend's chat template sees it. A named tuple, immutable
    like the rest: every turn makes one for each message of its history, and a tuple is made in
    about half the time of a frozen dataclass (whose ``__init__`` runs in Python)."""

    role: Role
    content: str


AGENT_SAID = "(A person from our team answered here:)"
CHAT_ROLES = frozenset(("user", "assistant", "system"))  # stored roles a prompt has as they are


def as_chat(role: str, content: str) -> ChatMessage:
    """A stored message as the model sees it. What a person from the team wrote to the customer
    during a handoff (role ``agent``) is an answer of the assistant's side, marked as a
    person's: so after the handoff the model knows that a person answered, and what they said."""
    if role == "agent":
        return ChatMessage("assistant", f"{AGENT_SAID} {content}")
    if role in CHAT_ROLES:
        return ChatMessage(role, content)  # type: ignore[arg-type]
    raise ValueError(f"a stored message of unknown role {role!r}")


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A platform event turned into text from a user. Adapters build these; nothing past the
    gateway knows which platform it came from."""

    platform: str
    chat_id: str
    user_id: str
    message_id: str
    text: str
    user_name: str | None = None
    thread_id: str | None = None
    # Platform details only the channel that made the message reads (chat type, what to reply
    # to); the gateway passes them through untouched.
    meta: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def conversation_key(self) -> str:
        """Which conversation this belongs to on its platform (a chat, or a thread in it)."""
        return self.chat_id if self.thread_id is None else f"{self.chat_id}:{self.thread_id}"

    @property
    def dedupe_key(self) -> str:
        """Platform + chat + message id: the same event delivered twice has the same key."""
        return f"{self.platform}:{self.chat_id}:{self.message_id}"

    def route(self) -> dict[str, Any]:
        """Where a reply to this message goes, without its text: what another gateway needs to
        post the reply (``from_route``)."""
        return {
            "platform": self.platform,
            "chat_id": self.chat_id,
            "user_id": self.user_id,
            "message_id": self.message_id,
            "user_name": self.user_name,
            "thread_id": self.thread_id,
            "meta": self.meta,
        }

    @classmethod
    def from_route(cls, route: dict[str, Any]) -> InboundMessage:
        """The message a ``route`` came from, for replying to it (its text is not carried)."""
        known = ("platform", "chat_id", "user_id", "message_id", "user_name", "thread_id")
        return cls(text="", meta=dict(route.get("meta") or {}), **{k: route[k] for k in known})


def turn_id_of(message_id: int) -> str:
    """A stored message's turn id: the same for every turn that answers it (the gateway's, the
    sweep's), so the gateway showing the reply takes a later turn's deltas in place, in the same
    platform message."""
    return f"m{message_id}"


@dataclass(frozen=True, slots=True)
class Turn:
    """Queue payload: "answer stored message ``message_id`` of ``conversation_id``, and stream the
    reply to gateway ``gateway``"."""

    conversation_id: int
    message_id: int
    gateway: str
    turn_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    enqueued_at: float = field(default_factory=time.time)
    # ``InboundMessage.route`` of the message, for channels any gateway can reply on (Telegram,
    # Slack); None for a channel only its own gateway reaches (a console)
    route: dict[str, Any] | None = None
    # how often it was re-queued from the dead letters: its gateway may be long gone, so the reply
    # goes to one that runs its channel now (the route on its first delta says which revival)
    revived: int = 0
    # "platform:user id" of the message's author, whose tokens the turn spends
    # (FRONTDESK_USER_DAILY_TOKENS); None for a turn the sweep queued again
    user: str | None = None
    # FRONTDESK_BURST_MS: the turn starts once its message is this old, and joins a later
    # message's turn if one came meanwhile; 0 (a console's, a swept turn's): at once
    burst_ms: int = 0
    # how often at most the reply's channel shows its progress (``Channel.shows_every_s``): its
    # deltas go no more often than this; 0 (a console's, a swept turn's): FRONTDESK_STREAM_FLUSH_MS
    flush_ms: int = 0


@dataclass(frozen=True, slots=True)
class ReplyDelta:
    """A piece of a reply on its way back to the gateway. ``done`` marks the last piece; ``error``,
    when set, is a polite sentence for the user and the reply ends there.

    ``attempt`` is the delivery of the turn that wrote it: a turn taken again (its worker or engine
    died mid-reply) is answered afresh, from seq 0, with a higher attempt. The gateway then sets
    ``restart`` on the first delta it passes on, and the channel starts the shown text over.

    ``route`` rides on the first delta of a revived turn (``Turn.revived``): the gateway it goes to
    did not take the message, and opens the reply from it."""

    turn_id: str
    seq: int
    text: str = ""
    done: bool = False
    error: str | None = None
    attempt: int = 1
    route: dict[str, Any] | None = None
    # the turn joined a later message's (FRONTDESK_BURST_MS): its reply is that one's, and this
    # one shows nothing
    joined: bool = False
    restart: bool = field(default=False, metadata={"wire": False})  # the gateway's, never sent


T = TypeVar("T", Turn, ReplyDelta)


_FIELDS = {
    cls: tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("wire", True))
    for cls in (Turn, ReplyDelta)
}
_VERSION = str(WIRE_VERSION)


def dumps(value: Any) -> str:
    """``value`` as JSON text, by orjson: what every turn writes (its queue entry, its reply's
    deltas, where its reply goes) in a tenth of the time ``json.dumps`` takes. Compact, in UTF-8
    (no ``\\u`` escapes); ``orjson.JSONEncodeError`` (a ``TypeError``) for what is not JSON, as
    for a lone surrogate (a text no platform or database takes either)."""
    return orjson.dumps(value).decode()


def encode(obj: Turn | ReplyDelta) -> dict[str, str]:
    """Serialise a wire object into queue entry fields."""
    data = {name: getattr(obj, name) for name in _FIELDS[type(obj)]}
    return {"v": _VERSION, "d": dumps(data)}


def decode(cls: type[T], fields: dict[Any, Any]) -> T:
    """Deserialise queue entry fields (bytes or str) into ``cls``. Unknown fields are dropped, so an
    older reader accepts a newer writer's additions; a missing field raises ``ValueError``."""
    raw = fields.get("d", fields.get(b"d"))
    if raw is None:
        raise ValueError("queue entry has no 'd' field")
    data = orjson.loads(raw)  # orjson.JSONDecodeError: a ValueError
    known = _FIELDS[cls]
    try:
        return cls(**{k: v for k, v in data.items() if k in known})
    except TypeError as exc:
        raise ValueError(f"queue entry is not a valid {cls.__name__}: {exc}") from exc
