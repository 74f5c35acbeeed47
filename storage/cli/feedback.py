"""`frontdesk feedback list|export`: the ratings users gave the bot's answers, as a table, JSON,
or an evaluation set in JSON Lines (the question, the history before it, the answer, its sources,
the rating, and what a person answered next when the customer was handed over)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from frontdesk.clitools import err, json_default, out, parse_when, print_json, run, settings

from ..feedback import RatedAnswer
from ..models import Rating
from .common import JsonOpt, RedactOpt, SinceOpt, masker, opened_logs, plain, shorten, when

feedback = typer.Typer(
    help="Ratings of the bot's answers: list them, or export them as an evaluation set.",
    no_args_is_help=True,
)
RatingOpt = Annotated[Rating | None, typer.Option(help="Only 👍 (up) or only 👎 (down).")]


def _rated(
    ctx: typer.Context, rating: Rating | None, since: str | None, limit: int | None,
    redact: bool | None,
) -> list[RatedAnswer]:  # fmt: skip
    after = parse_when(since, "--since")
    shown = masker(ctx, redact)

    async def go() -> list[RatedAnswer]:
        async with opened_logs(settings(ctx)) as logs:
            found = logs.store.rated_answers(rating=rating, since=after, limit=limit)
            return [row async for row in found]

    return [_masked(row, shown) for row in run(go())]


def _masked(row: RatedAnswer, shown: Callable[[str], str]) -> RatedAnswer:
    """The row with its texts masked as ``--redact`` says (e-mails, phone and card numbers)."""
    return replace(
        row, user_id=shown(row.user_id), question=shown(row.question), answer=shown(row.answer),
        history=[{**m, "content": shown(m["content"])} for m in row.history],
        agent_answer=shown(row.agent_answer) if row.agent_answer is not None else None,
    )  # fmt: skip


@feedback.command("list")
def list_ratings(
    ctx: typer.Context,
    rating: RatingOpt = None,
    since: SinceOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 50,
    as_json: JsonOpt = False,
    redact: RedactOpt = None,
) -> None:
    """The rated answers, newest rating first."""
    rows = _rated(ctx, rating, since, limit, redact)
    if as_json:
        print_json(rows)
        return
    if not rows:
        err.print(Text("no rated answers" + (f" since {since}" if since else "")))
        return
    table = Table("rated", "rating", "platform", "conversation", "question", "answer")
    for r in rows:
        table.add_row(
            when(r.rated_at), "👍" if r.rating == Rating.UP else "👎", plain(r.platform),
            str(r.conversation_id), plain(shorten(r.question)), plain(shorten(r.answer)),
        )  # fmt: skip
    out.print(table)


@feedback.command("export")
def export_ratings(
    ctx: typer.Context,
    rating: RatingOpt = None,
    since: SinceOpt = None,
    redact: RedactOpt = None,
) -> None:
    """Every rated answer as one JSON line: an evaluation set (for `frontdesk replay`, or any
    other tool)."""
    for row in _rated(ctx, rating, since, None, redact):
        print(json.dumps(row, default=json_default, ensure_ascii=False))
