"""`frontdesk tail`: new messages as they are stored, like ``tail -f``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Callable
from datetime import UTC
from typing import Annotated, Any

import typer
from rich.text import Text

from frontdesk.clitools import out, run, settings
from frontdesk.redact import masked_record

from ..filters import LogFilter
from ..models import MessageStatus
from .common import (
    PlatformOpt,
    RedactOpt,
    UserOpt,
    masker,
    opened_logs,
)


def tail(
    ctx: typer.Context,
    platform: PlatformOpt = None,
    user: UserOpt = None,
    lines: Annotated[int, typer.Option("--lines", "-n", min=0, help="Start with this many.")] = 10,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between polls.")] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    redact: RedactOpt = None,
) -> None:
    """Follow new messages as they are stored, like tail -f (Ctrl-C stops)."""
    filt = LogFilter(platform=platform, user=user, limit=500)
    shown = masker(ctx, redact)

    async def go() -> None:
        # Ctrl-C (or SIGTERM) ends the loop between polls: a flag, not a cancel, which a
        # database call under way could swallow (Python 3.11's wait_for, gh-86296) and leave
        # tail running
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with opened_logs(settings(ctx)) as logs:
            after = await logs.tail_start(lines, filt)
            while not stop.is_set():
                batch = await logs.messages_after(after, filt)
                for m in batch:
                    _print_tail(m, shown, as_json)
                    after = m.id
                if len(batch) < (filt.limit or 0):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), interval)

    try:
        run(go())
    except KeyboardInterrupt:
        pass
    except typer.Exit as exit_:
        if exit_.exit_code != 130:  # Ctrl-C is how tail ends
            raise


def _print_tail(m: Any, shown: Callable[[str], str], as_json: bool) -> None:
    record = masked_record(m, shown)
    if as_json:
        print(json.dumps(record, default=str), flush=True)
        return
    who = (record["user_name"] or record["user_id"] or "") if m.role == "user" else "bot"
    text = record["content"] if m.status == MessageStatus.OK else f"[{m.status}]"
    out.print(
        Text.assemble(
            (m.created_at.astimezone(UTC).strftime("%H:%M:%S"), "dim"),
            " ",
            (str(m.platform), "cyan"),
            f" #{m.conversation_id} ",
            (who, "bold"),
            ": ",
            " ".join(text.split()),
        )
    )
    sys.stdout.flush()
