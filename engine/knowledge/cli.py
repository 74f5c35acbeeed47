"""`frontdesk kb`: the knowledge base's admin commands (add, sync, list, remove, search), on the
same database as the conversation logs. Exit codes: 0 done (a file that could not be read is
named on stderr, and the others are added), 1 a service is unreachable, 2 a path that does not
exist, 3 no article by that name."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from frontdesk.clitools import err, fail, out, print_json, run, settings
from frontdesk.errors import EngineUnavailable
from frontdesk.settings import Settings
from frontdesk.storage import Store

from .embeddings import embed_missing, make_embedder
from .ingest import Outcome, add_paths, sync_folder
from .retrieval import Retriever

kb = typer.Typer(
    help="The knowledge base: help-centre articles the bot answers from.", no_args_is_help=True
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
PROGRESS_FROM_BYTES = 5_000_000  # a progress bar for adds larger than this


@asynccontextmanager
async def _store(cfg: Settings) -> AsyncIterator[Store]:
    async with Store(cfg.database_url, pool_size=2) as store:
        yield store


def _ingest(
    ctx: typer.Context,
    go: Callable[[Store, Callable[[str, int], None] | None], Any],
    paths: list[Path],
) -> None:
    cfg = settings(ctx)
    total = sum(_size(p) for p in paths)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), console=err,
        transient=True, disable=total < PROGRESS_FROM_BYTES,
    )  # fmt: skip
    task = progress.add_task("adding", total=total)

    def advance(source: str, n_bytes: int) -> None:
        progress.update(task, advance=n_bytes, description=source[-40:])

    async def main() -> Outcome:
        embedder = make_embedder(cfg)  # a setting's mistake shows before anything is written
        try:
            async with _store(cfg) as store:
                result: Outcome = await go(store, advance)
                if embedder is not None:  # vectors for the chunks just written
                    embedding = progress.add_task("embedding", total=None)
                    try:
                        result.embedded = await embed_missing(
                            store, embedder, lambda n: progress.update(embedding, advance=n)
                        )
                    except EngineUnavailable as exc:  # the articles stay added
                        result.unembedded = str(exc)
                return result
        finally:
            await getattr(embedder, "close", _nothing)()

    try:
        with progress:
            outcome = run(main())
    except FileNotFoundError as exc:
        raise fail(f"no such file or folder: {exc.args[0]}", 2) from None
    for line in outcome.failed:
        err.print(Text.assemble(("skipped: ", "yellow"), line))
    summary = (
        f"{len(outcome.added)} added, {len(outcome.updated)} updated, "
        f"{len(outcome.unchanged)} unchanged"
    )
    if outcome.removed:
        summary += f", {len(outcome.removed)} removed"
    if outcome.failed:
        summary += f", {len(outcome.failed)} skipped"
    embedded = f", {outcome.embedded} embedded" if outcome.embedded else ""
    out.print(Text(f"{summary} ({outcome.chunks} chunks written{embedded})"))
    if outcome.unembedded:
        raise fail(
            f"{outcome.unembedded}: the articles are stored, and some chunks have no vector yet "
            "(BM25 finds them); run the same command again once the server answers"
        )


async def _nothing() -> None:
    pass


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return 0


@kb.command()
def add(
    ctx: typer.Context,
    paths: Annotated[
        list[Path], typer.Argument(help="Files, or folders of Markdown, text, HTML and PDF.")
    ],
) -> None:
    """Add articles (an unchanged one is left as it is; a changed one replaced)."""
    url_base = settings(ctx).kb_url_base
    _ingest(ctx, lambda store, on: add_paths(store, paths, url_base=url_base, on_read=on), paths)


@kb.command()
def sync(
    ctx: typer.Context,
    folder: Annotated[Path, typer.Argument(help="A folder added before (or new).")],
) -> None:
    """Add what is new or changed in FOLDER, and remove what was added from it and is gone."""
    url_base = settings(ctx).kb_url_base
    _ingest(
        ctx, lambda store, on: sync_folder(store, folder, url_base=url_base, on_read=on), [folder]
    )


@kb.command("list")
def list_(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The articles, by source name."""
    cfg = settings(ctx)

    async def main() -> list[Any]:
        async with _store(cfg) as store:
            return await store.kb_sources()

    articles = run(main())
    if as_json:
        print_json([
            {"source": a.source, "title": a.title, "url": a.url, "chunks": a.n_chunks,
             "bytes": a.n_bytes, "updated_at": a.updated_at}
            for a in articles
        ])  # fmt: skip
        return
    if not articles:
        err.print("the knowledge base is empty: add articles with `frontdesk kb add PATH`")
        return
    table = Table("source", "title", "chunks", "url")
    for a in articles:
        table.add_row(Text(a.source), Text(a.title), str(a.n_chunks), Text(a.url or ""))
    out.print(table)


@kb.command()
def remove(
    ctx: typer.Context, source: Annotated[str, typer.Argument(help="The article's source name.")]
) -> None:
    """Remove one article and its chunks."""
    cfg = settings(ctx)

    async def main() -> bool:
        async with _store(cfg) as store:
            return await store.kb_remove(source)

    if not run(main()):
        raise fail(f"no article {source!r} in the knowledge base (`frontdesk kb list`)", 3)
    out.print(Text(f"removed {source}"))


@kb.command()
def search(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="Words, as a customer would ask.")],
    limit: Annotated[int, typer.Option(min=1, max=100, help="At most this many hits.")] = 5,
    as_json: JsonOpt = False,
) -> None:
    """The passages that best match QUERY, best first, as the bot would retrieve them (BM25, or
    with embeddings FRONTDESK_KB_RANKING; scores are then cosine similarities)."""
    cfg = settings(ctx)

    async def main() -> list[Any]:
        async with _store(cfg) as store:
            embedder = make_embedder(cfg)
            retriever = Retriever(cfg, store, embedder)
            try:
                return await retriever.rank(query, cfg.kb_ranking, limit)
            finally:
                await getattr(embedder, "close", _nothing)()

    hits = run(main())
    if as_json:
        print_json([
            {"source": h.source, "title": h.title, "text": h.text, "score": h.score,
             "chunk_id": h.chunk_id, "headings": h.headings, "url": h.url}
            for h in hits
        ])  # fmt: skip
        return
    if not hits:
        err.print(Text(f"nothing in the knowledge base matches {query!r}"))
        return
    table = Table("score", "source", "where", "text")
    for h in hits:
        where = " > ".join(p for p in (h.title, h.headings) if p)
        flat = " ".join(h.text.split())
        table.add_row(f"{h.score:.3f}", Text(h.source), Text(where), Text(flat[:160]))
    out.print(table)
