"""`frontdesk purge`: erasure of one person (``--user``) or retention (``--older-than``), each asked first unless ``--yes``."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.text import Text

from frontdesk.clitools import fail, out, parse_when, print_json, run, settings

from ..filters import LogFilter
from ..retention import Removed
from .common import (
    JsonOpt,
    YesOpt,
    confirm,
    opened_logs,
    when,
)


def purge(
    ctx: typer.Context,
    user: Annotated[
        str | None,
        typer.Option(help="Erase this user's messages (id on any platform, or display name)."),
    ] = None,
    all_matching: Annotated[
        bool,
        typer.Option(
            "--all-matching", help="With --user NAME: erase every user of that display name."
        ),
    ] = False,
    older_than: Annotated[
        str | None,
        typer.Option(help="Retention: delete conversations inactive for this long (e.g. 90d)."),
    ] = None,
    platform: Annotated[
        str | None, typer.Option(help="With --older-than: only this platform.")
    ] = None,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Right to erasure (--user) or retention (--older-than); asks first unless --yes."""
    if (user is None) == (older_than is None):
        raise fail("give exactly one of --user USER and --older-than AGE", 2)
    cfg = settings(ctx)
    if user is not None:

        async def peek_user() -> list[Any]:
            async with opened_logs(cfg) as logs:
                return await logs.user_matches(user)

        matches = run(peek_user())
        if not matches:
            raise fail(f"no stored messages of a user {user!r}", 3)
        names = ", ".join(f"{p}:{uid} ({name or 'no name'})" for p, uid, name in matches)
        by_name = all(uid != user for _p, uid, _n in matches)
        if by_name and len(matches) > 1 and not all_matching:
            raise fail(
                f"{user!r} is the name of {len(matches)} users: {names}; give one user id, "
                "or --all-matching to erase them all",
                2,
            )
        if not yes:
            confirm(
                f"Erase every message of {names}, the replies to them, and their "
                "conversations that hold nobody else?"
            )

        async def erase() -> Any:
            async with opened_logs(cfg) as logs:
                return await logs.purge_user([(p, uid) for p, uid, _n in matches])

        removed = run(erase())
        what = f"user {names}"
    else:
        assert older_than is not None
        cutoff = parse_when(older_than, "--older-than")
        assert cutoff is not None
        scope = LogFilter(platform=platform, limit=None)

        async def peek_old() -> int:
            async with opened_logs(cfg) as logs:
                return await logs.count_older_than(cutoff, scope)

        count = run(peek_old())
        if count and not yes:
            confirm(
                f"Delete {count:,} conversations inactive since {when(cutoff)} UTC"
                + (f" on {platform}" if platform else "")
                + "?"
            )

        async def expire() -> Any:
            async with opened_logs(cfg) as logs:
                return await logs.purge_older_than(cutoff, scope)

        removed = run(expire()) if count else Removed()
        what = f"conversations inactive since {when(cutoff)} UTC"
    if as_json:
        print_json(removed)
        return
    out.print(
        Text(
            f"removed {removed.conversations:,} conversations and {removed.messages:,} messages "
            f"({what})"
        )
    )
