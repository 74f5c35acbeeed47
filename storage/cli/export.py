"""`frontdesk export`: messages, oldest first, as JSON Lines, CSV or a JSON array, streamed in constant memory (the writer is ``storage.export``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from frontdesk.clitools import err, fail, run, settings

from ..export import ExportFormat, write_export
from .common import (
    PlatformOpt,
    RedactOpt,
    SinceOpt,
    StatusOpt,
    UntilOpt,
    UserOpt,
    log_filter,
    masker,
    opened_logs,
)


def export(
    ctx: typer.Context,
    fmt: Annotated[ExportFormat, typer.Option("--format", "-f", help="jsonl, csv or json.")] = (
        ExportFormat.jsonl
    ),
    output: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write to this file (default: stdout).")
    ] = None,
    platform: PlatformOpt = None,
    user: UserOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    status: StatusOpt = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many messages.")] = None,
    redact: RedactOpt = None,
) -> None:
    """Export messages (oldest first) as JSON Lines, CSV or a JSON array, in constant memory."""
    filt = log_filter(platform, user, since, until, status, limit)
    shown = masker(ctx, redact)
    cfg = settings(ctx)

    async def go() -> int:
        async with opened_logs(cfg) as logs:
            if output is None:
                return await write_export(logs, filt, fmt, shown, sys.stdout, None)
            total = await logs.count_messages(filt)
            columns = (TextColumn("exporting"), BarColumn(), MofNCompleteColumn())
            with (
                Progress(*columns, TimeRemainingColumn(), console=err) as progress,
                output.open("w", encoding="utf-8", newline="") as stream,
            ):
                task = progress.add_task("export", total=total)
                return await write_export(
                    logs, filt, fmt, shown, stream, lambda n: progress.update(task, completed=n)
                )

    try:
        written = run(go())
    except OSError as exc:
        raise fail(f"cannot write {output}: {exc.strerror or exc}", 2) from None
    if output is not None:
        err.print(f"wrote {written:,} messages to {output}")
