"""`frontdesk replay`: logged user turns answered again by another engine, model or system prompt,
side by side with what they got then. An engine tool: it reads the logs, builds each turn's
prompt as a worker would (the stored history before it, within the token budget, and the
knowledge base's passages), generates, and writes the rows; it never reaches a platform and
stores nothing. Use it to check a new model against last week's thumbs-down."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.table import Table
from rich.text import Text

from frontdesk import texts
from frontdesk.clitools import err, fail, out, parse_when, print_json, run, settings
from frontdesk.errors import FrontdeskError, PromptTooLong
from frontdesk.settings import Settings
from frontdesk.storage import LoggedTurn, Rating, Store
from frontdesk.wire import as_chat

from .backends import Backend, GenerationParams, create_backend
from .context import build_prompt
from .knowledge import Retriever
from .knowledge.embeddings import make_embedder


@dataclass(frozen=True, slots=True)
class Replayed:
    conversation_id: int
    question_id: int
    question: str
    rating: str | None
    old_answer: str
    old_model: str | None
    old_tokens: int | None
    old_latency_ms: float | None
    new_model: str
    new_answer: str = ""
    new_tokens: int = 0
    new_latency_ms: float = 0.0
    prompt_tokens: int = 0
    error: str | None = None


async def replay(
    cfg: Settings,
    *,
    rating: Rating | None,
    since: str | None,
    limit: int,
    on_row: Callable[[Replayed], None],
) -> int:
    """Answer the chosen logged turns again with ``cfg``'s engine; ``on_row`` gets each row as
    it is done. How many turns were replayed."""
    after = parse_when(since, "--since")
    backend = create_backend(cfg)
    async with Store(cfg.database_url, pool_size=2) as store:
        turns = await store.logged_turns(rating=rating, since=after, limit=limit)
        if not turns:
            return 0
        embedder = make_embedder(cfg)
        retriever = Retriever(cfg, store, embedder)
        await backend.start()
        try:
            for turn in turns:
                on_row(await _again(cfg, store, backend, retriever, turn))
        finally:
            await backend.stop()
            await retriever.stop()
    return len(turns)


async def _again(
    cfg: Settings, store: Store, backend: Backend, retriever: Retriever, turn: LoggedTurn
) -> Replayed:
    context = await store.turn_context(turn.conversation_id, turn.question_id)
    messages = list(context.history)
    previous = next((m.content for m in reversed(messages[:-1]) if m.role == "user"), None)
    started = time.perf_counter()
    retrieval = await retriever.retrieve(turn.question, previous)
    old = Replayed(
        conversation_id=turn.conversation_id, question_id=turn.question_id,
        question=turn.question, rating=turn.rating, old_answer=turn.answer,
        old_model=turn.model, old_tokens=turn.tokens_out, old_latency_ms=turn.latency_ms,
        new_model=str(backend.model),
    )  # fmt: skip
    if retrieval is not None and retrieval.uncovered and retriever.strict:
        took = (time.perf_counter() - started) * 1000
        return replace(old, new_answer=texts.NOT_COVERED, new_latency_ms=took)
    if retrieval is not None and retrieval.passages and messages:
        messages[-1] = as_chat("user", retrieval.user_turn(messages[-1].content))
    budget = cfg.context_tokens - cfg.max_new_tokens
    try:
        built = build_prompt(backend, cfg.system_prompt, messages, budget)
    except PromptTooLong as exc:
        return replace(old, error=str(exc))
    params = GenerationParams(uuid.uuid4().hex, cfg.max_new_tokens, cfg.temperature)
    pieces: list[str] = []
    tokens = 0
    try:
        async for chunk in backend.stream(built.prompt, params):
            pieces.append(chunk.text)
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
    except FrontdeskError as exc:
        return replace(
            old, new_answer="".join(pieces), new_tokens=tokens, error=str(exc),
            new_latency_ms=(time.perf_counter() - started) * 1000,
            prompt_tokens=built.prompt.n_tokens,
        )  # fmt: skip
    return replace(
        old, new_answer="".join(pieces).strip(), new_tokens=tokens,
        new_latency_ms=(time.perf_counter() - started) * 1000,
        prompt_tokens=built.prompt.n_tokens,
    )  # fmt: skip


def replay_command(
    ctx: typer.Context,
    engine: Annotated[str | None, typer.Option(help="The engine to answer with (default: FRONTDESK_ENGINE).")] = None,
    model: Annotated[str | None, typer.Option(help="Its model (default: FRONTDESK_MODEL).")] = None,
    system_prompt: Annotated[str | None, typer.Option(help="Another system prompt.")] = None,
    rating: Annotated[Rating | None, typer.Option(help="Only answers rated up or down.")] = None,
    since: Annotated[str | None, typer.Option(help="Turns from this time: 7d, 24h, or a date.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many turns, newest first.")] = 20,
    out_file: Annotated[Path | None, typer.Option("--out", help="Also write each row to this JSON Lines file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:  # fmt: skip
    """Answer logged user turns again with another engine, model or system prompt, and show
    old and new side by side (tokens, latency). Sends nothing to any platform; stores nothing."""
    base = settings(ctx)
    changes: dict[str, object] = {}
    if engine is not None:
        changes["engine"] = engine
    if model is not None:
        changes["model"] = model
    if system_prompt is not None:
        changes["system_prompt"] = system_prompt
    try:
        cfg = Settings.model_validate({**base.model_dump(), **changes})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise fail(f"--{where.replace('_', '-')}: {first['msg']}", 2) from None
    rows: list[Replayed] = []
    sink = out_file.open("w", encoding="utf-8") if out_file is not None else None

    def on_row(row: Replayed) -> None:
        rows.append(row)
        if sink is not None:
            sink.write(json.dumps(asdict(row), ensure_ascii=False) + "\n")
            sink.flush()

    try:
        count = run(replay(cfg, rating=rating, since=since, limit=limit, on_row=on_row))
    finally:
        if sink is not None:
            sink.close()
    if as_json:
        print_json(rows)
        return
    if not count:
        err.print(Text("no logged turns to replay"))
        return
    table = Table("question", "then", "now", "tokens then/now", "latency then/now ms")
    for r in rows:
        now = Text(r.new_answer) if r.error is None else Text(f"error: {r.error}", style="red")
        table.add_row(
            Text(r.question), Text(r.old_answer), now,
            f"{r.old_tokens if r.old_tokens is not None else '?'} / {r.new_tokens}",
            f"{r.old_latency_ms or 0:.0f} / {r.new_latency_ms:.0f}",
        )  # fmt: skip
    out.print(table)
    err.print(Text(f"{count} turns replayed with {cfg.engine} ({rows[0].new_model}); nothing sent"))
