"""frontdesk's storage: conversation history in SQL. The only package that imports SQLAlchemy."""

from .models import ConversationStatus, MessageStatus
from .store import (
    AwaitingMessage,
    ChunkIn,
    ConversationSummary,
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
    "KnowledgeHit",
    "KnowledgeSource",
    "MessageStatus",
    "RecordedMessage",
    "ReplyFigures",
    "Store",
    "StoredMessage",
    "TurnMessage",
]
