"""The Telegram channel as the handoff desk (``FRONTDESK_DESK=telegram:<supergroup id>``): a forum
topic per handoff in the agents' supergroup (``createForumTopic``; the bot must be an admin
there, allowed to manage topics), opened with the customer, the reason, a short summary and the
conversation id. Agents' messages in the topic go to the customer, except those that start with
``note:``; ``/resolve`` in the topic ends the handoff. The customer's messages appear in the
topic. What it all means is ``frontdesk.bots.desk``'s."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from telegram import Message
from telegram.constants import ChatType
from telegram.error import TelegramError

from frontdesk.errors import FrontdeskError

from ..desk import HandoffCard
from .api import ChatRef, TelegramApi

if TYPE_CHECKING:
    from ..gateway import Gateway

log = logging.getLogger(__name__)
NOTE_PREFIX = "note:"
TOPIC_NAME_LIMIT = 128
STATES = {
    "waiting": "Waiting for a person.",
    "human": "With {agent}.",
    "resolved": "Resolved: the customer is back with the bot. Nothing written here reaches them.",
}


def card_text(card: HandoffCard) -> str:
    lines = [
        f"Handoff #{card.handoff_id}: {card.customer} on {card.platform} ({card.reason})",
        f"First question: {card.first_question or '(none)'}",
    ]
    if card.last_messages:
        lines.append("Last messages:")
        lines += [f"  {role}: {text}" for role, text in card.last_messages]
    lines.append(
        f"Conversation {card.conversation_id} (frontdesk conversations show "
        f"{card.conversation_id}). Write here to answer the customer; start with note: to keep "
        "a message among agents; /resolve gives the customer back to the bot."
    )
    return "\n".join(lines)


class TelegramDesk(TelegramApi):
    """The desk part of ``TelegramChannel``, which sets these attributes."""

    name: str
    _gateway: Gateway | None

    async def open_desk_thread(self, place: str, card: HandoffCard) -> str:
        name = f"#{card.handoff_id} {card.customer} ({card.platform})"[:TOPIC_NAME_LIMIT]
        try:
            topic = await self._bot.create_forum_topic(chat_id=int(place), name=name)
        except TelegramError as exc:  # not a forum, the bot not an admin there
            raise FrontdeskError(f"Telegram refused a topic in the desk {place}: {exc}") from None
        thread = topic.message_thread_id
        await self._in_topic(int(place), thread, card_text(card))
        return str(thread)

    async def post_to_desk_thread(self, place: str, thread: str, text: str) -> None:
        await self._in_topic(int(place), int(thread), text)

    async def show_handoff(self, place: str, thread: str, card: HandoffCard) -> None:
        state = STATES.get(card.state, card.state).format(agent=card.agent or "a person")
        await self._in_topic(int(place), int(thread), state)

    async def _in_topic(self, chat_id: int, thread: int, text: str) -> None:
        """Plain text (no markup: a customer's words are shown as they are) in a topic."""
        bot = self._bot

        async def send(**kw: Any) -> Any:
            return await bot.send_message(chat_id=chat_id, message_thread_id=thread, **kw)

        try:
            await self._call(ChatRef(chat_id, ChatType.SUPERGROUP, thread, None), send, None, text)
        except TelegramError as exc:
            raise FrontdeskError(f"Telegram refused a post to the desk {chat_id}: {exc}") from None

    def _in_desk(self, chat_id: int) -> bool:
        desk = self._gateway.desk if self._gateway is not None else None
        return desk is not None and desk.is_desk(self.name, str(chat_id))

    async def _agent_message(self, msg: Message) -> None:
        """A person's message in the desk supergroup: in a handoff's topic it goes to the
        customer (unless it is a note); /resolve there ends the handoff."""
        assert self._gateway is not None and self._gateway.desk is not None
        desk = self._gateway.desk
        user, text = msg.from_user, (msg.text or "").strip()
        if user is None or not msg.is_topic_message or not msg.message_thread_id or not text:
            return
        thread = str(msg.message_thread_id)
        agent = str(user.id)
        if text.split("@")[0].lower() in ("/resolve", "/bot"):
            said = await desk.resolve(f"{self.name}:{msg.chat.id}", thread, agent)
        elif text.lower().startswith(NOTE_PREFIX) or text.startswith("/"):
            return
        else:
            said = await desk.agent_said(
                f"{self.name}:{msg.chat.id}", thread, agent_id=agent, agent_name=user.full_name or user.username, text=text,
                event_id=f"{msg.chat.id}:{msg.message_id}",
            )  # fmt: skip
        if said:
            await self._in_topic(msg.chat.id, msg.message_thread_id, said)
