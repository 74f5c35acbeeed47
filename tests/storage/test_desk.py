"""Handoff state in SQL, on both databases: one open handoff per conversation however many ask at
once, and a message from a customer a person has is stored without a reply route, so nothing
(the gateway, the sweep) queues a turn for it."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from frontdesk.storage import HandoffState, Store
from frontdesk.storage.models import utcnow
from frontdesk.wire import AGENT_SAID, ChatMessage, InboundMessage


def message(chat: str, text: str) -> InboundMessage:
    return InboundMessage("telegram", chat, "u1", uuid.uuid4().hex, text, user_name="Alice")


async def test_one_handoff_however_many_open_it_and_its_messages_queue_no_turn(
    store: Store,
) -> None:
    chat = f"chat-{uuid.uuid4().hex[:8]}"
    route = {**message(chat, "").route(), "gateway": "gw"}
    first = await store.record_user_message(message(chat, "where is my parcel"), route)
    assert first is not None and not first.handed_off
    opened = await asyncio.gather(
        *(
            store.open_handoff(first.conversation_id, reason="asked", route={"n": i}, desk="d")
            for i in range(5)
        )
    )
    assert sum(new for _handoff, new in opened) == 1
    assert len({handoff.id for handoff, _new in opened}) == 1
    handoff = opened[0][0]
    assert handoff.state == HandoffState.WAITING

    during = await store.record_user_message(message(chat, "hello? anyone?"), route)
    assert during is not None and during.handed_off
    later = utcnow() + timedelta(hours=1)
    awaiting = {m.message_id for m in await store.awaiting_replies(later, 100)}
    assert during.message_id not in awaiting  # the sweep leaves it alone
    assert first.message_id in awaiting  # (the first one was never answered: it would be)

    await store.set_desk_thread(handoff.id, "1700000000.000100")
    assert (await store.handoff_by_thread("d", "1700000000.000100")).id == handoff.id  # type: ignore[union-attr]
    stored = await store.record_agent_message(
        handoff, agent_id="U0AGENT", agent_name="Dana", text="On its way.", dedupe_key="d:1"
    )
    again = await store.record_agent_message(
        handoff, agent_id="U0AGENT", agent_name="Dana", text="On its way.", dedupe_key="d:1"
    )
    assert stored is not None and again is None  # a retried desk event is stored once
    assert (await store.handoff(handoff.id)).state == HandoffState.HUMAN  # type: ignore[union-attr]

    resolved = await store.resolve_handoff(handoff.id)
    assert resolved is not None and resolved.state == HandoffState.RESOLVED
    assert await store.resolve_handoff(handoff.id) is None  # once
    assert await store.handoff_of(first.conversation_id) is None
    after = await store.record_user_message(message(chat, "thanks"), route)
    assert after is not None and not after.handed_off  # the bot's again: a turn answers it
    _conv, messages = await store.conversation(first.conversation_id)
    assert [(m.role, m.content) for m in messages][-2:] == [
        ("agent", "On its way."), ("user", "thanks"),
    ]  # fmt: skip
    # a turn's history has the person's answer as the model sees it
    context = await store.turn_context(first.conversation_id, after.message_id)
    assert context.history == [
        ChatMessage("user", "where is my parcel"),
        ChatMessage("user", "hello? anyone?"),
        ChatMessage("assistant", f"{AGENT_SAID} On its way."),
        ChatMessage("user", "thanks"),
    ]
    assert all(type(m) is ChatMessage for m in context.history)
    assert context.ids == [first.message_id, during.message_id, stored, after.message_id]


async def test_a_desk_awaits_a_thread_only_for_an_open_handoff_opened_lately_without_one(
    store: Store,
) -> None:
    desk = f"slack:C{uuid.uuid4().hex[:8]}"  # the shared database holds other tests' desks
    before = utcnow() - timedelta(minutes=1)
    assert not await store.threads_opening(desk, before)

    async def handoff_asked() -> int:
        recorded = await store.record_user_message(
            message(f"chat-{uuid.uuid4().hex[:8]}", "a person please")
        )
        assert recorded is not None
        handoff, _new = await store.open_handoff(
            recorded.conversation_id, reason="asked", route={}, desk=desk
        )
        return handoff.id

    first = await handoff_asked()
    assert await store.threads_opening(desk, before)  # its card is being posted
    assert not await store.threads_opening(f"{desk}X", before)  # another desk's
    assert not await store.threads_opening(desk, utcnow() + timedelta(seconds=1))  # too old
    await store.set_desk_thread(first, "1700000000.000200")
    assert not await store.threads_opening(desk, before)

    second = await handoff_asked()
    assert await store.threads_opening(desk, before)
    await store.resolve_handoff(second)  # its card could not be posted
    assert not await store.threads_opening(desk, before)
