"""The Slack channel as the handoff desk (``FRONTDESK_DESK=slack:<channel id>``): a parent
message per handoff in the desk channel, with the customer, the reason, a short summary and the
conversation id, and Claim and Resolve buttons (Block Kit, whose presses come signed like events,
through bolt's action handlers). Agents answer in its thread: each reply goes to the customer,
except one that starts with ``note:``, which stays among the agents. The customer's messages
appear in the thread. What it all means is ``frontdesk.bots.desk``'s."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from slack_sdk.errors import SlackApiError

from frontdesk import texts
from frontdesk.errors import FrontdeskError

from ..desk import HandoffCard
from .api import SlackApi
from .mrkdwn import to_mrkdwn

if TYPE_CHECKING:
    from ..gateway import Gateway

log = logging.getLogger(__name__)
CLAIM, RESOLVE = "frontdesk_claim", "frontdesk_resolve"
RESOLVE_THREAD = "frontdesk_resolve_thread"  # a takeover in the customer's own thread
NOTE_PREFIX = "note:"  # an agent's reply in a handoff's thread that the customer does not get
STATES = {
    "waiting": ":hourglass_flowing_sand: Waiting for a person",
    "human": ":raising_hand: With {agent}",
    "resolved": ":white_check_mark: Resolved: back with the bot",
}


@contextmanager
def _refusals(place: str) -> Iterator[None]:
    """Slack refusing a desk post (no such channel, the bot not in it) as a FrontdeskError."""
    try:
        yield
    except SlackApiError as exc:
        raise FrontdeskError(f"Slack refused a post to the desk {place}: "
                             f"{exc.response.get('error')}") from None  # fmt: skip


_LINK = re.compile(r"<([^<>|]+)(?:\|([^<>]*))?>")


def plain_text(mrkdwn: str) -> str:
    """What an agent wrote in Slack, as another platform shows it: links as "label (url)",
    mentions as "@name", Slack's escapes undone."""

    def unlinked(found: re.Match[str]) -> str:
        target, label = found[1], found[2]
        if target.startswith(("@", "#", "!")):  # a mention, a channel, a special mention
            return f"@{label}" if label and target.startswith("@") else (label or target)
        return f"{label} ({target})" if label and label != target else target

    text = _LINK.sub(unlinked, mrkdwn)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _escaped(text: str) -> str:
    """Text shown as it is in mrkdwn: Slack's three control characters escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def card_blocks(card: HandoffCard) -> tuple[str, list[dict[str, Any]]]:
    """The parent message of a handoff: its fallback text and its blocks."""
    agent = f"<@{card.agent}>" if card.agent and card.agent.startswith("U") else card.agent
    state = STATES.get(card.state, card.state).format(agent=agent or "a person")
    head = (
        f"*Handoff #{card.handoff_id}*: {_escaped(card.customer)} on {card.platform} "
        f"({card.reason})\n{state}"
    )
    lines = [f"*First question:* {_escaped(card.first_question) or '(none)'}"]
    if card.last_messages:
        lines.append("*Last messages:*")
        lines += [f">{role}: {_escaped(text)}" for role, text in card.last_messages]
    lines.append(
        f"Conversation {card.conversation_id}: `frontdesk conversations show "
        f"{card.conversation_id}`. Answer in this thread; start a reply with `note:` to keep it "
        "among agents."
    )
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": head}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)[:2900]}},
    ]
    if card.state != "resolved":
        value = str(card.handoff_id)
        buttons = [
            {"type": "button", "action_id": RESOLVE, "value": value, "style": "primary",
             "text": {"type": "plain_text", "text": "Resolve"}},
        ]  # fmt: skip
        if card.state == "waiting":
            buttons.insert(0, {"type": "button", "action_id": CLAIM, "value": value,
                               "text": {"type": "plain_text", "text": "Claim"}})  # fmt: skip
        blocks.append({"type": "actions", "elements": buttons})
    text = f"Handoff #{card.handoff_id}: {card.customer} on {card.platform} ({card.reason})"
    return text, blocks


class SlackDesk(SlackApi):
    """The desk part of ``SlackChannel``, which sets these attributes."""

    name: str
    _gateway: Gateway | None

    async def open_desk_thread(self, place: str, card: HandoffCard) -> str:
        text, blocks = card_blocks(card)
        with _refusals(place):
            return await self.post(place, "", text, blocks=blocks)

    async def post_to_desk_thread(self, place: str, thread: str, text: str) -> None:
        # shown as written: a customer's "<!channel>" or "@here" pings nobody at the desk
        with _refusals(place):
            await self.post(place, thread, _escaped(text))

    async def show_handoff(self, place: str, thread: str, card: HandoffCard) -> None:
        text, blocks = card_blocks(card)
        with _refusals(place):
            await self.replace_message(place, thread, text, blocks)

    def _in_desk(self, channel: str) -> bool:
        desk = self._gateway.desk if self._gateway is not None else None
        return desk is not None and desk.is_desk(self.name, channel)

    async def _agent_message(self, event: dict[str, Any], text: str, name: str | None) -> None:
        """A person's message in the desk channel: a reply in a handoff's thread goes to its
        customer (unless it is a note); anything else there is the agents' own talk."""
        assert self._gateway is not None and self._gateway.desk is not None
        thread, channel = event.get("thread_ts"), event.get("channel", "")
        if not thread or thread == event.get("ts") or not text.strip():
            return
        if text.strip().lower().startswith(NOTE_PREFIX):
            return
        said = await self._gateway.desk.agent_said(
            f"{self.name}:{channel}", thread, agent_id=event.get("user", ""), agent_name=name,
            text=plain_text(text), event_id=event.get("ts", ""),
        )  # fmt: skip
        if said:
            await self.post(channel, thread, to_mrkdwn(said))

    async def _on_desk_action(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        """Claim or Resolve pressed on a handoff's message."""
        await ack()
        if self._gateway is None or self._gateway.desk is None:
            return
        desk = self._gateway.desk
        thread = str((body.get("message") or {}).get("ts") or "")
        channel = str((body.get("channel") or {}).get("id") or "")
        user = body.get("user") or {}
        agent = str(user.get("id") or "")
        if not desk.is_desk(self.name, channel):
            return
        if action.get("action_id") == CLAIM:
            said = await desk.claim(f"{self.name}:{channel}", thread, agent, agent)
        else:
            said = await desk.resolve(f"{self.name}:{channel}", thread, agent)
        if said:
            await self.post(channel, thread, to_mrkdwn(said))

    # -- a person answering in the customer's own thread ----------------------------------------

    async def show_takeover(self, channel: str, thread: str, handoff_id: int) -> None:
        """Say in the thread that a person has it now, with the Resolve button that gives it
        back to the bot."""
        blocks = [
            {"type": "section", "text": {"type": "mrkdwn", "text": texts.TAKEN_OVER}},
            {"type": "actions", "elements": [
                {"type": "button", "action_id": RESOLVE_THREAD, "value": str(handoff_id),
                 "text": {"type": "plain_text", "text": "Resolve"}},
            ]},
        ]  # fmt: skip
        try:
            await self.post(channel, thread, texts.TAKEN_OVER, blocks=blocks)
        except (FrontdeskError, SlackApiError) as exc:  # the takeover stands; only unsaid
            log.warning("cannot say in %s that a person took over: %s", thread, exc)

    async def _on_thread_resolve(
        self, ack: Any, body: dict[str, Any], action: dict[str, Any]
    ) -> None:
        """Resolve pressed under a takeover's notice: the bot answers in the thread again."""
        await ack()
        value = str(action.get("value") or "")
        if self._gateway is None or not value.isdigit():
            return
        message = body.get("message") or {}
        channel = str((body.get("channel") or {}).get("id") or "")
        ts, thread = str(message.get("ts") or ""), str(message.get("thread_ts") or "")
        if not await self._gateway.resolve_in_thread(int(value)):
            return  # resolved already (a second press)
        done = [{"type": "section", "text": {"type": "mrkdwn", "text": texts.TAKEOVER_RESOLVED}}]
        with _refusals(channel):
            await self.replace_message(channel, ts, texts.TAKEOVER_RESOLVED, done)
            await self.post(channel, thread or ts, to_mrkdwn(texts.BOT_IS_BACK))
