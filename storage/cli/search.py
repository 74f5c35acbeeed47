"""`frontdesk search`: full-text search over message text; each hit shows the words around its first match, masked first, then cropped and highlighted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from frontdesk.clitools import err, out, print_json, run, settings

from ..search import WORD, SearchHit
from .common import (
    JsonOpt,
    PlatformOpt,
    RedactOpt,
    SinceOpt,
    StatusOpt,
    UntilOpt,
    UserOpt,
    log_filter,
    masker,
    opened_logs,
    plain,
    when,
)


def search(
    ctx: typer.Context,
    query: Annotated[
        str, typer.Argument(help="Words to find (all of them, any form: refunds ~ refund).")
    ],
    platform: PlatformOpt = None,
    user: UserOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    status: StatusOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many hits, newest first.")] = 50,
    as_json: JsonOpt = False,
    redact: RedactOpt = None,
) -> None:
    """Full-text search over message text, hits highlighted."""
    filt = log_filter(platform, user, since, until, status, limit)
    shown = masker(ctx, redact)

    async def go() -> list[Any]:
        async with opened_logs(settings(ctx)) as logs:
            return await logs.search(query, filt)

    hits = run(go())
    if as_json:
        print_json([_hit_record(h, shown) for h in hits])
        return
    if not hits:
        err.print(Text(f"no messages match {query!r}"))
        return
    table = Table("conversation", "time", "platform", "user", "role", "text")
    for h in hits:
        snippet = Text()
        for piece, hit in snippet_pieces(h, shown):
            snippet.append(piece, style="bold yellow" if hit else None)
        table.add_row(
            str(h.conversation_id),
            when(h.created_at),
            plain(h.platform),
            plain(shown(h.user_name or "") or h.user_id),
            plain(h.role),
            snippet,
        )
    out.print(table)


SNIPPET_WORDS = 24  # words around the first hit that a search result shows
SNIPPET_BEFORE = 6  # of them, before it


def snippet_pieces(hit: SearchHit, shown: Callable[[str], str]) -> list[tuple[str, bool]]:
    """The part of a hit's text to show, as (text, is a hit) pieces: masked first, then cropped
    to the words around the first hit, then highlighted. So what masking hides, neither the
    highlight nor the crop can bring back (a card number cut in half, an e-mail address split
    by a highlight)."""
    visible = " ".join(shown(hit.text).split())
    words = list(WORD.finditer(visible))
    first = next((i for i, w in enumerate(words) if w.group().lower() in hit.hits), 0)
    end = min(len(words), max(first - SNIPPET_BEFORE, 0) + SNIPPET_WORDS)
    begin = max(0, end - SNIPPET_WORDS)
    pieces: list[tuple[str, bool]] = [("…", False)] if begin > 0 else []
    at = words[begin].start() if begin > 0 else 0
    for w in words[begin:end]:
        if w.group().lower() in hit.hits:
            pieces += [(visible[at : w.start()], False), (w.group(), True)]
            at = w.end()
    stop = words[end - 1].end() if end < len(words) else len(visible)
    pieces.append((visible[at:stop], False))
    if end < len(words):
        pieces.append(("…", False))
    return [(text, is_hit) for text, is_hit in pieces if text]


def _hit_record(hit: SearchHit, shown: Callable[[str], str]) -> dict[str, Any]:
    """A hit for --json: its snippet with each hit as **word**, and no field unmasked."""
    record = {
        name: getattr(hit, name)
        for name in hit.__dataclass_fields__
        if name not in ("text", "hits")
    }
    record["user_name"] = shown(hit.user_name) if hit.user_name is not None else None
    record["snippet"] = "".join(
        f"**{text}**" if is_hit else text for text, is_hit in snippet_pieces(hit, shown)
    )
    return record
