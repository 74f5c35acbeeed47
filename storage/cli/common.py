"""What the log commands share: their options (the same filters on every read command), building a ``LogFilter`` from them, the masker of ``--redact``, the opened logs, confirmation, and printing stored text as it is."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.text import Text

from frontdesk.clitools import fail, parse_when, settings
from frontdesk.redact import redact as mask
from frontdesk.redact import unchanged
from frontdesk.settings import Settings

from ..filters import LogFilter
from ..logs import Logs
from ..models import ConversationStatus
from ..store import Store

NOT_CONFIRMED = 4


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
RedactOpt = Annotated[
    bool | None,
    typer.Option(
        "--redact/--no-redact",
        help="Mask e-mail addresses, phone and card numbers (default: FRONTDESK_REDACT).",
        show_default=False,
    ),
]
PlatformOpt = Annotated[
    str | None, typer.Option(help="Only this platform (telegram, slack, console…).")
]
UserOpt = Annotated[str | None, typer.Option(help="Only this user: a user id, or a display name.")]
SinceOpt = Annotated[
    str | None, typer.Option(help="From this time: 2d, 12h, 90d ago, or a date like 2026-11-01.")
]
UntilOpt = Annotated[str | None, typer.Option(help="Before this time (same forms as --since).")]
StatusOpt = Annotated[
    ConversationStatus | None, typer.Option(help="Only active or closed conversations.")
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def log_filter(
    platform: str | None,
    user: str | None,
    since: str | None,
    until: str | None,
    status: ConversationStatus | None = None,
    limit: int | None = None,
) -> LogFilter:
    return LogFilter(
        platform=platform,
        user=user,
        since=parse_when(since, "--since"),
        until=parse_when(until, "--until"),
        status=status.value if status else None,
        limit=limit,
    )


def masker(ctx: typer.Context, redact: bool | None) -> Callable[[str], str]:
    on = settings(ctx).redact if redact is None else redact
    return mask if on else unchanged


@asynccontextmanager
async def opened_logs(cfg: Settings) -> AsyncIterator[Logs]:
    async with Store(cfg.database_url, pool_size=2) as store:
        yield Logs(store)


def plain(value: object) -> Text:
    """Stored text as a table cell or a line: printed as it is, never read as Rich markup."""
    return Text("" if value is None else str(value))


def shorten(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def confirm(question: str) -> None:
    if not typer.confirm(question, default=False, err=True):
        raise fail("not confirmed; nothing was deleted", NOT_CONFIRMED)
