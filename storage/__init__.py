"""frontdesk's storage: conversation history in SQL. The only package that imports SQLAlchemy."""

from .models import ConversationStatus, HandoffState, MessageStatus
from .store import (
    AwaitingMessage,
    ChunkIn,
    ConversationSummary,
    HandoffRecord,
    KnowledgeHit,
    KnowledgeSource,
    RecordedMessage,
    ReplyFigures,
    Store,
    StoredMessage,
    TurnMessage,
)

__all__ = [
    "AwaitingMessage",
    "ChunkIn",
    "ConversationStatus",
    "ConversationSummary",
    "HandoffRecord",
    "HandoffState",
    "KnowledgeHit",
    "KnowledgeSource",
    "MessageStatus",
    "RecordedMessage",
    "ReplyFigures",
    "Store",
    "StoredMessage",
    "TurnMessage",
]
