"""Admin commands that read and manage stored conversations: `frontdesk conversations …` and
`frontdesk db …`. Each opens the store, does one thing, and prints a rich table or ``--json``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from frontdesk.clitools import out, print_json, run, settings

from .store import Store

conversations = typer.Typer(help="Read stored conversations.", no_args_is_help=True)
db = typer.Typer(help="Manage the database schema.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _shorten(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


@conversations.command("list")
def list_conversations(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, help="How many, newest activity first.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List conversations by last activity."""

    async def go() -> list:
        async with Store(settings(ctx).database_url) as store:
            return await store.list_conversations(limit=limit)

    rows = run(go())
    if as_json:
        print_json(rows)
        return
    table = Table("id", "platform", "user", "messages", "last activity", "status", "last message")
    for c in rows:
        table.add_row(
            str(c.id),
            c.platform,
            escape(c.user_name or c.user_id or ""),
            str(c.message_count),
            c.last_activity_at.strftime("%Y-%m-%d %H:%M"),
            c.status,
            escape(_shorten(c.last_message)),
        )
    out.print(table)


@conversations.command("show")
def show_conversation(
    ctx: typer.Context,
    conversation_id: Annotated[int, typer.Argument(help="The conversation's id (see `list`).")],
    as_json: JsonOpt = False,
) -> None:
    """Show one conversation's transcript with its figures."""

    async def go() -> tuple:
        async with Store(settings(ctx).database_url) as store:
            return await store.conversation(conversation_id)

    conv, messages = run(go())
    if as_json:
        print_json({"conversation": conv, "messages": messages})
        return
    out.print(
        f"[bold]conversation {conv.id}[/] · {conv.platform} · {conv.user_name or conv.user_id} · "
        f"{conv.status} · {conv.message_count} messages"
    )
    table = Table("time", "role", "text", "tokens in/out", "ttft ms", "latency ms")
    for m in messages:
        text = (
            escape(m.content)
            if m.status == "ok"
            else f"[red]{m.status}: {escape(m.error or '')}[/]"
        )
        table.add_row(
            m.created_at.strftime("%H:%M:%S"),
            m.role,
            text,
            f"{m.tokens_in}/{m.tokens_out}" if m.tokens_in is not None else "",
            f"{m.ttft_ms:.0f}" if m.ttft_ms is not None else "",
            f"{m.latency_ms:.0f}" if m.latency_ms is not None else "",
        )
    out.print(table)


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
