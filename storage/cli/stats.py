"""`frontdesk stats`: per platform, turns per day, active users, latency and time to first token,
tokens, the error rate, messages admission control refused, and handoffs to a person."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from frontdesk.clitools import err, out, print_json, run, settings

from .common import (
    JsonOpt,
    PlatformOpt,
    log_filter,
    opened_logs,
    plain,
)


def stats(
    ctx: typer.Context,
    since: Annotated[str, typer.Option(help="Over this window: 7d, 24h, or a date.")] = "7d",
    platform: PlatformOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Turns per day, active users, latency and time to first token, tokens, error rate,
    messages refused by admission control."""
    filt = log_filter(platform, None, since, None)

    async def go() -> list[Any]:
        async with opened_logs(settings(ctx)) as logs:
            return await logs.stats(filt)

    rows = run(go())
    if as_json:
        print_json(rows)
        return
    if not rows:
        err.print(Text(f"no turns since {since}"))
        return
    table = Table(
        "platform",
        "turns",
        "active users",
        "latency p50/p95 ms",
        "ttft p50/p95 ms",
        "tokens in/out",
        "error rate",
    )
    for r in rows:
        table.add_row(
            plain(r.platform),
            f"{r.turns:,}",
            f"{r.active_users:,}",
            _pair(r.latency_p50_ms, r.latency_p95_ms),
            _pair(r.ttft_p50_ms, r.ttft_p95_ms),
            f"{r.tokens_in:,} / {r.tokens_out:,}",
            f"{r.error_rate:.1%}",
        )
    out.print(table)
    days = sorted({d for r in rows for d in r.turns_per_day})
    per_day = Table("day", title="turns per day")
    for r in rows:
        per_day.add_column(plain(r.platform))
    for d in days:
        per_day.add_row(d, *(str(r.turns_per_day.get(d, 0)) for r in rows))
    out.print(per_day)
    if any(r.refused for r in rows):
        refused = Table(
            "platform", "over FRONTDESK_USER_RATE", "backlog at FRONTDESK_MAX_BACKLOG",
            "past FRONTDESK_USER_DAILY_TOKENS", title="messages refused by admission control",
        )  # fmt: skip
        for r in rows:
            if r.refused:
                counts = (r.refused.get(k, 0) for k in ("rate", "busy", "budget"))
                refused.add_row(plain(r.platform), *(f"{n:,}" for n in counts))
        out.print(refused)
    if any(r.handoffs for r in rows):
        desk = Table(
            "platform", "handoffs by reason", "first human answer p50/p95 s", "resolved",
            title="handoffs to a person",
        )  # fmt: skip
        for r in rows:
            if r.handoffs:
                reasons = ", ".join(f"{k} {v}" for k, v in r.handoffs.items())
                resolved = "" if r.handoffs_resolved is None else f"{r.handoffs_resolved:.0%}"
                desk.add_row(
                    plain(r.platform), plain(reasons),
                    _pair(r.first_human_p50_s, r.first_human_p95_s), resolved,
                )  # fmt: skip
        out.print(desk)


def _pair(a: float | None, b: float | None) -> str:
    return "" if a is None or b is None else f"{a:.0f} / {b:.0f}"
