"""The operators' commands over stored conversations: `frontdesk conversations list|show|delete`,
`search`, `export`, `purge`, `stats`, `tail`, `feedback list|export`, and `frontdesk db upgrade`.

Every read command prints a rich table for people and ``--json`` for scripts, takes the same
filters (``--platform``, ``--user``, ``--since``, ``--until``, ``--status``, ``--limit``), and masks
e-mail addresses, phone and card numbers with ``--redact`` (or ``FRONTDESK_REDACT=1``). Exit codes:
0 done, 1 a service is unreachable, 2 bad configuration or arguments, 3 nothing by that id or name,
4 not confirmed (nothing was deleted).
"""

from __future__ import annotations

import typer

from .conversations import conversations
from .db import db
from .export import export
from .feedback import feedback
from .purge import purge
from .search import search
from .stats import stats
from .tail import tail


def register(app: typer.Typer) -> None:
    """Mount the log commands on the root app."""
    app.add_typer(conversations, name="conversations")
    app.add_typer(db, name="db")
    app.add_typer(feedback, name="feedback")
    for command in (search, export, purge, stats, tail):
        app.command()(command)


__all__ = ["conversations", "db", "feedback", "register"]
