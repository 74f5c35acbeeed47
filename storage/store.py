"""``Store``: the one object the rest of frontdesk holds for its database, a thin facade. The
connections are ``Database``'s (``database``), the queries of conversations and their messages
``Conversations``' (``conversations``); each aggregate that storage grows (knowledge, handoffs,
feedback) joins as a base of its own. The admin CLI's reads and deletions are ``Logs`` (``logs``),
over a started ``Store``.
"""

from __future__ import annotations

from .conversations import (
    AwaitingMessage,
    Conversations,
    ConversationSummary,
    RecordedMessage,
    ReplyFigures,
    StoredMessage,
    TurnContext,
    TurnMessage,
)
from .desk import HandoffRecord, Handoffs
from .feedback import FeedbackQueries, LoggedTurn, Rated, RatedAnswer
from .knowledge import ChunkIn, Knowledge, KnowledgeHit, KnowledgeSource


class Store(Conversations, Knowledge, Handoffs, FeedbackQueries):
    """Conversation history on one database. ``async with Store(url) as store:`` or start()/stop()."""


__all__ = [
    "AwaitingMessage",
    "ChunkIn",
    "ConversationSummary",
    "HandoffRecord",
    "KnowledgeHit",
    "KnowledgeSource",
    "LoggedTurn",
    "Rated",
    "RatedAnswer",
    "RecordedMessage",
    "ReplyFigures",
    "Store",
    "StoredMessage",
    "TurnContext",
    "TurnMessage",
]
