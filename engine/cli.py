"""Admin commands for the turn queue: `frontdesk queue status` and `frontdesk queue retry-dead`.
They talk to Redis directly (the embedded mode's queue lives inside one process, out of reach),
open a single connection rather than a worker's pool, and print rich tables or ``--json``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from frontdesk.clitools import fail, out, print_json, run, settings
from frontdesk.settings import Settings

from .queue import QueueStatus, RedisQueue

queue = typer.Typer(
    help="Inspect the turn queue and re-queue dead-lettered turns.", no_args_is_help=True
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]

CONSUMER = "admin-cli"  # never reads the group, so it never shows up among its consumers


def _redis_settings(ctx: typer.Context) -> Settings:
    cfg = settings(ctx)
    if cfg.redis_url is None:
        raise fail(
            "`frontdesk queue` needs FRONTDESK_REDIS_URL: embedded mode keeps its queue in memory",
            2,
        )
    return cfg


@asynccontextmanager
async def _opened(cfg: Settings) -> AsyncIterator[RedisQueue]:
    assert cfg.redis_url is not None
    q = RedisQueue(
        cfg.redis_url, consumer=CONSUMER, prefix=cfg.queue_prefix, maxlen=cfg.queue_maxlen
    )
    try:
        yield q
    finally:
        await q.stop()


async def _status(cfg: Settings) -> QueueStatus:
    # No start(): reading the figures should not create the stream or group as a side effect.
    async with _opened(cfg) as q:
        return await q.status()


async def _retry(cfg: Settings, limit: int | None) -> int:
    async with _opened(cfg) as q:
        await q.start(warm=False)  # sets the stream up as a worker expects it
        return await q.retry_dead(limit=limit)


@queue.command("status")
def status(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Show what is queued, pending and dead-lettered, and the workers reading the queue."""
    figures = run(_status(_redis_settings(ctx)))
    if as_json:
        print_json(figures)
        return
    _print_figures(figures)
    if not figures.group_exists:
        out.print("[yellow]no worker has started on this queue yet (no consumer group)[/]")
    elif not figures.consumers:
        out.print("no worker has read from this queue yet")
    else:
        _print_consumers(figures)


@queue.command("retry-dead")
def retry_dead(
    ctx: typer.Context,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Re-queue at most this many, oldest first.")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Put dead-lettered turns back on the queue, oldest first, for the workers to try again."""
    cfg = _redis_settings(ctx)
    dead = run(_status(cfg)).dead
    requeued = 0
    if dead == 0:
        message = "no dead-lettered turns"
    else:
        wanted = dead if limit is None else min(limit, dead)
        which = "all of them" if wanted == dead else f"the oldest {wanted}"
        question = f"{_turns(dead)} dead-lettered on {cfg.queue_prefix}. Re-queue {which}?"
        # The question goes to stderr, so that --json output stays parseable.
        if yes or typer.confirm(question, err=True):
            requeued = run(_retry(cfg, limit))
            message = (
                f"re-queued {requeued} of {dead} dead-lettered turns"
                if requeued < dead
                else f"re-queued {_turns(requeued)}"
            )
        else:
            message = "nothing re-queued"
    if as_json:
        print_json({"requeued": requeued})
    else:
        out.print(message)


def _print_figures(s: QueueStatus) -> None:
    table = Table("figure", "value", title=escape(s.stream), title_justify="left")
    table.add_row("queued (stream length)", str(s.length))
    table.add_row("pending (read, not acked)", str(s.pending))
    table.add_row("lag (not read yet)", _number(s.lag))
    table.add_row("entries read", _number(s.entries_read))
    table.add_row("last delivered id", s.last_delivered_id or "–")
    oldest = (
        f"{s.oldest_pending_id}, idle {_duration(s.oldest_pending_idle_ms)}"
        if s.oldest_pending_id
        else "–"
    )
    table.add_row("oldest pending", oldest)
    table.add_row("dead letters", f"[red]{s.dead}[/]" if s.dead else "0")
    table.add_row("refused: a user over FRONTDESK_USER_RATE", str(s.refused_rate))
    table.add_row("refused: backlog at FRONTDESK_MAX_BACKLOG", str(s.refused_busy))
    table.add_row("refused: a user past FRONTDESK_USER_DAILY_TOKENS", str(s.refused_budget))
    out.print(table)


def _print_consumers(s: QueueStatus) -> None:
    table = Table("consumer", "pending", "idle", "inactive")
    for c in s.consumers:
        table.add_row(
            escape(c.name), str(c.pending), _duration(c.idle_ms), _duration(c.inactive_ms)
        )
    out.print(table)


def _number(value: int | None) -> str:
    return "unknown" if value is None else str(value)


def _turns(n: int) -> str:
    return f"{n} turn" if n == 1 else f"{n} turns"


def _duration(ms: int | None) -> str:
    if ms is None or ms < 0:  # Redis reports -1 for a consumer that never read
        return "–"
    if ms < 1000:
        return f"{ms} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
