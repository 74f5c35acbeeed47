"""The operators' commands over stored conversations: `frontdesk conversations list|show|delete`,
`search`, `export`, `purge`, `stats`, `tail`, and `frontdesk db upgrade`.

Every read command prints a rich table for people and ``--json`` for scripts, takes the same
filters (``--platform``, ``--user``, ``--since``, ``--until``, ``--status``, ``--limit``), and masks
e-mail addresses, phone and card numbers with ``--redact`` (or ``FRONTDESK_REDACT=1``). Exit codes:
0 done, 1 a service is unreachable, 2 bad configuration or arguments, 3 nothing by that id or name,
4 not confirmed (nothing was deleted).
"""

from __future__ import annotations

import asyncio
import enum
import json
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from frontdesk.clitools import err, fail, out, parse_when, print_json, run, settings
from frontdesk.redact import masked_record, unchanged
from frontdesk.redact import redact as mask
from frontdesk.settings import Settings

from .export import ExportFormat, write_export
from .filters import LogFilter
from .logs import Logs
from .models import ConversationStatus, MessageStatus
from .retention import Removed
from .search import WORD, SearchHit
from .store import Store

conversations = typer.Typer(help="Read and delete stored conversations.", no_args_is_help=True)
db = typer.Typer(help="Manage the database schema.", no_args_is_help=True)

NOT_CONFIRMED = 4


class Format(enum.StrEnum):
    text = "text"
    markdown = "markdown"
    json = "json"


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


def _filter(
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


def _masker(ctx: typer.Context, redact: bool | None) -> Callable[[str], str]:
    on = settings(ctx).redact if redact is None else redact
    return mask if on else unchanged


@asynccontextmanager
async def _logs(cfg: Settings) -> AsyncIterator[Logs]:
    async with Store(cfg.database_url, pool_size=2) as store:
        yield Logs(store)


def _plain(value: object) -> Text:
    """Stored text as a table cell or a line: printed as it is, never read as Rich markup."""
    return Text("" if value is None else str(value))


def _shorten(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


# -- conversations --------------------------------------------------------------------------------


@conversations.command("list")
def list_conversations(
    ctx: typer.Context,
    platform: PlatformOpt = None,
    user: UserOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    status: StatusOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="How many, newest activity first.")] = 50,
    as_json: JsonOpt = False,
    redact: RedactOpt = None,
) -> None:
    """List conversations by last activity (its last message cut short)."""
    filt = _filter(platform, user, since, until, status, limit)
    shown = _masker(ctx, redact)

    async def go() -> list[Any]:
        async with _logs(settings(ctx)) as logs:
            return await logs.list_conversations(filt)

    rows = [masked_record(c, shown) for c in run(go())]
    if as_json:
        print_json([{**c, "last_message": c["last_message"] or ""} for c in rows])
        return
    table = Table("id", "platform", "user", "messages", "last activity", "status", "last message")
    for c in rows:
        table.add_row(
            str(c["id"]),
            _plain(c["platform"]),
            _plain(c["user_name"] or c["user_id"]),
            str(c["message_count"]),
            _when(c["last_activity_at"]),
            _plain(c["status"]),
            _plain(_shorten(c["last_message"])),
        )
    out.print(table)


@conversations.command("show")
def show_conversation(
    ctx: typer.Context,
    conversation_id: Annotated[int, typer.Argument(help="The conversation's id (see `list`).")],
    fmt: Annotated[Format, typer.Option("--format", "-f", help="text, markdown or json.")] = (
        Format.text
    ),
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    redact: RedactOpt = None,
) -> None:
    """Show one conversation's transcript, with times, roles, tokens and latency."""
    shown = _masker(ctx, redact)

    async def go() -> tuple[Any, Any]:
        async with _logs(settings(ctx)) as logs:
            return await logs.store.conversation(conversation_id)

    found, stored = run(go())
    conv = masked_record(found, shown)
    messages = [masked_record(m, shown) for m in stored]
    if as_json or fmt is Format.json:
        print_json({"conversation": conv, "messages": messages})
        return
    who = conv["user_name"] or conv["user_id"] or "unknown user"
    if fmt is Format.markdown:
        lines = [
            f"# Conversation {conv['id']}",
            "",
            f"{conv['platform']} · {who} · {conv['status']} · {conv['message_count']} messages · "
            f"{_when(conv['created_at'])} to {_when(conv['last_activity_at'])} UTC",
            "",
        ]
        for m in messages:
            figures = _figures(m)
            lines.append(
                f"**{m['role']}** · {_when(m['created_at'])}" + (f" · {figures}" if figures else "")
            )
            ok = m["status"] == MessageStatus.OK
            body = m["content"] if ok else f"*{m['status']}: {m['error'] or ''}*"
            lines += ["", body, ""]
        print("\n".join(lines).rstrip())
        return
    out.print(
        Text.assemble(
            (f"conversation {conv['id']}", "bold"),
            f" · {conv['platform']} · {who} · {conv['status']} · {conv['message_count']} messages",
        )
    )
    table = Table("time", "role", "text", "tokens in/out", "ttft ms", "latency ms")
    for m in messages:
        text = (
            _plain(m["content"])
            if m["status"] == MessageStatus.OK
            else Text(f"{m['status']}: {m['error'] or ''}", style="red")
        )
        table.add_row(
            m["created_at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            _plain(m["role"]),
            text,
            f"{m['tokens_in']}/{m['tokens_out']}" if m["tokens_in"] is not None else "",
            f"{m['ttft_ms']:.0f}" if m["ttft_ms"] is not None else "",
            f"{m['latency_ms']:.0f}" if m["latency_ms"] is not None else "",
        )
    out.print(table)


def _figures(m: dict[str, Any]) -> str:
    parts = []
    if m["tokens_in"] is not None:
        parts.append(f"{m['tokens_in']} → {m['tokens_out']} tokens")
    if m["ttft_ms"] is not None:
        parts.append(f"first token {m['ttft_ms']:.0f} ms")
    if m["latency_ms"] is not None:
        parts.append(f"{m['latency_ms']:.0f} ms")
    return ", ".join(parts)


@conversations.command("delete")
def delete_conversation(
    ctx: typer.Context,
    conversation_id: Annotated[int, typer.Argument(help="The conversation's id (see `list`).")],
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete one conversation and all its messages."""
    cfg = settings(ctx)
    if not yes:

        async def peek() -> Any:
            async with _logs(cfg) as logs:
                return await logs.store.conversation(conversation_id)

        conv, messages = run(peek())
        who = conv.user_name or conv.user_id or "unknown user"
        _confirm(
            f"Delete conversation {conv.id} ({conv.platform}, {who}, {len(messages)} messages)?"
        )

    async def go() -> Any:
        async with _logs(cfg) as logs:
            return await logs.delete_conversation(conversation_id)

    removed = run(go())
    if as_json:
        print_json(removed)
        return
    out.print(f"deleted conversation {conversation_id} ({removed.messages} messages)")


def _confirm(question: str) -> None:
    if not typer.confirm(question, default=False, err=True):
        raise fail("not confirmed; nothing was deleted", NOT_CONFIRMED)


# -- search ---------------------------------------------------------------------------------------


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
    filt = _filter(platform, user, since, until, status, limit)
    shown = _masker(ctx, redact)

    async def go() -> list[Any]:
        async with _logs(settings(ctx)) as logs:
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
            _when(h.created_at),
            _plain(h.platform),
            _plain(shown(h.user_name or "") or h.user_id),
            _plain(h.role),
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


# -- export ---------------------------------------------------------------------------------------


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
    filt = _filter(platform, user, since, until, status, limit)
    shown = _masker(ctx, redact)
    cfg = settings(ctx)

    async def go() -> int:
        async with _logs(cfg) as logs:
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


# -- purge ----------------------------------------------------------------------------------------


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
            async with _logs(cfg) as logs:
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
            _confirm(
                f"Erase every message of {names}, the replies to them, and their "
                "conversations that hold nobody else?"
            )

        async def erase() -> Any:
            async with _logs(cfg) as logs:
                return await logs.purge_user([(p, uid) for p, uid, _n in matches])

        removed = run(erase())
        what = f"user {names}"
    else:
        assert older_than is not None
        cutoff = parse_when(older_than, "--older-than")
        assert cutoff is not None
        scope = LogFilter(platform=platform, limit=None)

        async def peek_old() -> int:
            async with _logs(cfg) as logs:
                return await logs.count_older_than(cutoff, scope)

        count = run(peek_old())
        if count and not yes:
            _confirm(
                f"Delete {count:,} conversations inactive since {_when(cutoff)} UTC"
                + (f" on {platform}" if platform else "")
                + "?"
            )

        async def expire() -> Any:
            async with _logs(cfg) as logs:
                return await logs.purge_older_than(cutoff, scope)

        removed = run(expire()) if count else Removed()
        what = f"conversations inactive since {_when(cutoff)} UTC"
    if as_json:
        print_json(removed)
        return
    out.print(
        Text(
            f"removed {removed.conversations:,} conversations and {removed.messages:,} messages "
            f"({what})"
        )
    )


# -- stats ----------------------------------------------------------------------------------------


def stats(
    ctx: typer.Context,
    since: Annotated[str, typer.Option(help="Over this window: 7d, 24h, or a date.")] = "7d",
    platform: PlatformOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Turns per day, active users, latency and time to first token, tokens, error rate."""
    filt = _filter(platform, None, since, None)

    async def go() -> list[Any]:
        async with _logs(settings(ctx)) as logs:
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
            _plain(r.platform),
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
        per_day.add_column(_plain(r.platform))
    for d in days:
        per_day.add_row(d, *(str(r.turns_per_day.get(d, 0)) for r in rows))
    out.print(per_day)


def _pair(a: float | None, b: float | None) -> str:
    return "" if a is None or b is None else f"{a:.0f} / {b:.0f}"


# -- tail -----------------------------------------------------------------------------------------


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
    shown = _masker(ctx, redact)

    async def go() -> None:
        async with _logs(settings(ctx)) as logs:
            after = await logs.tail_start(lines, filt)
            while True:
                batch = await logs.messages_after(after, filt)
                for m in batch:
                    _print_tail(m, shown, as_json)
                    after = m.id
                if len(batch) < (filt.limit or 0):
                    await asyncio.sleep(interval)

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


def register(app: typer.Typer) -> None:
    """Mount the log commands on the root app."""
    app.add_typer(conversations, name="conversations")
    app.add_typer(db, name="db")
    for command in (search, export, purge, stats, tail):
        app.command()(command)


# -- db -------------------------------------------------------------------------------------------


@db.command("upgrade")
def upgrade(ctx: typer.Context) -> None:
    """Create or upgrade the schema to the newest revision (Alembic)."""

    async def go() -> str:
        store = Store(settings(ctx).database_url)
        try:
            return await store.upgrade()
        finally:
            await store.stop()

    revision = run(go())
    out.print(f"database is at revision {revision}")


__all__: Sequence[str] = ["conversations", "db", "register"]
