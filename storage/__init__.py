"""frontdesk's storage: conversation history in SQL. The only package that imports SQLAlchemy."""

from .store import (
    ConversationSummary,
    RecordedMessage,
    ReplyFigures,
    Store,
    StoredMessage,
    TurnMessage,
)

__all__ = [
    "ConversationSummary",
    "RecordedMessage",
    "ReplyFigures",
    "Store",
    "StoredMessage",
    "TurnMessage",
]
