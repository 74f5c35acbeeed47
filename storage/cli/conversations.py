"""`frontdesk conversations list|show|delete`: stored conversations by last activity, one transcript in text, Markdown or JSON, and deleting one."""

from __future__ import annotations

import enum
from datetime import UTC
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from frontdesk.clitools import out, print_json, run, settings
from frontdesk.redact import masked_record

from ..models import MessageStatus
from .common import (
    JsonOpt,
    PlatformOpt,
    RedactOpt,
    SinceOpt,
    StatusOpt,
    UntilOpt,
    UserOpt,
    YesOpt,
    confirm,
    log_filter,
    masker,
    opened_logs,
    plain,
    shorten,
    when,
)

conversations = typer.Typer(help="Read and delete stored conversations.", no_args_is_help=True)


class Format(enum.StrEnum):
    text = "text"
    markdown = "markdown"
    json = "json"


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
    filt = log_filter(platform, user, since, until, status, limit)
    shown = masker(ctx, redact)

    async def go() -> list[Any]:
        async with opened_logs(settings(ctx)) as logs:
            return await logs.list_conversations(filt)

    rows = [masked_record(c, shown) for c in run(go())]
    if as_json:
        print_json([{**c, "last_message": c["last_message"] or ""} for c in rows])
        return
    table = Table("id", "platform", "user", "messages", "last activity", "status", "last message")
    for c in rows:
        table.add_row(
            str(c["id"]),
            plain(c["platform"]),
            plain(c["user_name"] or c["user_id"]),
            str(c["message_count"]),
            when(c["last_activity_at"]),
            plain(c["status"]),
            plain(shorten(c["last_message"])),
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
    shown = masker(ctx, redact)

    async def go() -> tuple[Any, Any]:
        async with opened_logs(settings(ctx)) as logs:
            return await logs.store.conversation(conversation_id)

    found, stored = run(go())
    conv = masked_record(found, shown)
    messages = [masked_record(m, shown) for m in stored]
    for record, message in zip(messages, stored, strict=True):
        del record["kb_sources"]
        record["sources"] = message.sources  # the knowledge-base chunks a reply was given
    if as_json or fmt is Format.json:
        print_json({"conversation": conv, "messages": messages})
        return
    who = conv["user_name"] or conv["user_id"] or "unknown user"
    if fmt is Format.markdown:
        lines = [
            f"# Conversation {conv['id']}",
            "",
            f"{conv['platform']} · {who} · {conv['status']} · {conv['message_count']} messages · "
            f"{when(conv['created_at'])} to {when(conv['last_activity_at'])} UTC",
            "",
        ]
        for m in messages:
            figures = _figures(m)
            lines.append(
                f"**{_role(m)}** · {when(m['created_at'])}" + (f" · {figures}" if figures else "")
            )
            ok = m["status"] == MessageStatus.OK
            body = m["content"] if ok else f"*{m['status']}: {m['error'] or ''}*"
            lines += ["", body, ""]
            if m["sources"]:
                lines += [f"*given: {_given(m['sources'])}*", ""]
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
            plain(m["content"])
            if m["status"] == MessageStatus.OK
            else Text(f"{m['status']}: {m['error'] or ''}", style="red")
        )
        if m["sources"]:
            text.append(f"\ngiven: {_given(m['sources'])}", style="dim")
        table.add_row(
            m["created_at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            plain(_role(m)),
            text,
            f"{m['tokens_in']}/{m['tokens_out']}" if m["tokens_in"] is not None else "",
            f"{m['ttft_ms']:.0f}" if m["ttft_ms"] is not None else "",
            f"{m['latency_ms']:.0f}" if m["latency_ms"] is not None else "",
        )
    out.print(table)


def _role(m: dict[str, Any]) -> str:
    """A message's role; an agent's (a person, during a handoff) with who it was."""
    if m["role"] == "agent":
        return f"agent {m['user_name'] or m['user_id'] or ''}".strip()
    return str(m["role"])


def _given(sources: list[dict[str, Any]]) -> str:
    """The knowledge-base chunks a reply was given: ``source#chunk id`` each."""
    return ", ".join(f"{s.get('source')}#{s.get('chunk_id')}" for s in sources)


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
            async with opened_logs(cfg) as logs:
                return await logs.store.conversation(conversation_id)

        conv, messages = run(peek())
        who = conv.user_name or conv.user_id or "unknown user"
        confirm(
            f"Delete conversation {conv.id} ({conv.platform}, {who}, {len(messages)} messages)?"
        )

    async def go() -> Any:
        async with opened_logs(cfg) as logs:
            return await logs.delete_conversation(conversation_id)

    removed = run(go())
    if as_json:
        print_json(removed)
        return
    out.print(f"deleted conversation {conversation_id} ({removed.messages} messages)")
