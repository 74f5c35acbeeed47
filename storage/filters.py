"""The filters every admin command shares: one ``LogFilter`` (platform, user, time window, status,
limit), and ``LogQueries``, the base of each class of admin queries (logs, search, retention,
figures), which turns a filter into SQL conditions. So every command filters the same way."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import (
    ColumnElement,
    func,
    or_,
)

from .models import Conversation, Message

if TYPE_CHECKING:
    from .store import Store


@dataclass(frozen=True, slots=True)
class LogFilter:
    """Which conversations (and their messages) a command covers. ``user`` matches a user id on
    any platform, or a display name exactly (case-insensitive). ``since``/``until`` bound the
    conversation's last activity for listings, and each message's time for search, export and
    figures."""

    platform: str | None = None
    user: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    status: str | None = None
    limit: int | None = 50


class LogQueries:
    """What each class of admin queries shares: a started ``Store``, its dialect, and the SQL
    conditions of a ``LogFilter``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.dialect = store.dialect

    def _conversation_filters(self, filt: LogFilter) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = []
        if filt.platform:
            where.append(Conversation.platform == filt.platform)
        if filt.user:
            where.append(
                or_(
                    Conversation.user_id == filt.user,
                    func.lower(Conversation.user_name) == filt.user.lower(),
                )
            )
        if filt.status:
            where.append(Conversation.status == filt.status)
        return where

    def _message_filters(self, filt: LogFilter) -> list[ColumnElement[bool]]:
        where = self._conversation_filters(filt)
        if filt.since:
            where.append(Message.created_at >= filt.since)
        if filt.until:
            where.append(Message.created_at < filt.until)
        return where
