"""frontdesk's storage: conversation history in SQL. The only package that imports SQLAlchemy."""

from .models import ConversationStatus, MessageStatus
from .store import (
    AwaitingMessage,
    ConversationSummary,
    RecordedMessage,
    ReplyFigures,
    Store,
    StoredMessage,
    TurnMessage,
)

__all__ = [
    "AwaitingMessage",
    "ConversationStatus",
    "ConversationSummary",
    "MessageStatus",
    "RecordedMessage",
    "ReplyFigures",
    "Store",
    "StoredMessage",
    "TurnMessage",
]
