"""frontdesk's storage: conversation history in SQL. The only package that imports SQLAlchemy."""

from .models import REFUSED, ConversationStatus, HandoffState, MessageStatus, Rating
from .store import (
    AwaitingMessage,
    ChunkIn,
    ConversationSummary,
    HandoffRecord,
    KnowledgeHit,
    KnowledgeSource,
    LoggedTurn,
    Rated,
    RatedAnswer,
    RecordedMessage,
    ReplyFigures,
    Store,
    StoredMessage,
    TurnContext,
    TurnMessage,
)

__all__ = [
    "REFUSED",
    "AwaitingMessage",
    "ChunkIn",
    "ConversationStatus",
    "ConversationSummary",
    "HandoffRecord",
    "HandoffState",
    "KnowledgeHit",
    "KnowledgeSource",
    "LoggedTurn",
    "MessageStatus",
    "Rated",
    "RatedAnswer",
    "Rating",
    "RecordedMessage",
    "ReplyFigures",
    "Store",
    "StoredMessage",
    "TurnContext",
    "TurnMessage",
]
