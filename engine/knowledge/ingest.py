"""Adding help-centre files to the knowledge base, and syncing a folder with it.

Adding is idempotent by content hash: an unchanged file is not read again and changes nothing;
a changed one has its chunks replaced in one transaction. A file that cannot be read is named in
one line (``Outcome.failed``) and the others are still added. ``sync`` of a folder then removes
the articles added from that folder whose files are gone, and none other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from frontdesk.storage import Store

from .chunks import chunk_events
from .documents import Unreadable, find_documents, open_document

OPTIMIZE_FROM_CHUNKS = 1_000  # an add that writes this many chunks optimizes the search index


@dataclass
class Outcome:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # one line each: the file, and why
    chunks: int = 0  # chunks written
    embedded: int = 0  # chunks given a vector
    unembedded: str | None = None  # why some chunks have no vector yet (the embeddings server)


async def add_paths(
    store: Store,
    paths: Sequence[Path],
    *,
    url_base: str | None = None,
    on_file: Callable[[str, int], None] | None = None,
) -> Outcome:
    """Add the files at ``paths`` (files, or folders of them). ``on_file(source, n_bytes)`` is
    called after each, for a progress bar. Raises FileNotFoundError for a missing path, before
    anything is written."""
    found = await asyncio.to_thread(find_documents, paths)
    outcome = Outcome()
    for path, source, origin in found:
        doc = None
        try:
            doc = await asyncio.to_thread(open_document, path, source, url_base)
            before = await store.kb_hash(source)
            if before == doc.content_hash:
                outcome.unchanged.append(source)
            else:
                chunks = chunk_events(doc.title, doc.events())
                outcome.chunks += await store.kb_replace(
                    source, title=doc.title, url=doc.url, content_hash=doc.content_hash,
                    n_bytes=doc.n_bytes, chunks=chunks, origin=origin,
                )  # fmt: skip
                (outcome.updated if before is not None else outcome.added).append(source)
        except Unreadable as exc:
            outcome.failed.append(str(exc))
        if on_file is not None:
            on_file(source, doc.n_bytes if doc is not None else 0)
    if outcome.chunks >= OPTIMIZE_FROM_CHUNKS:
        await store.kb_optimize()
    return outcome


async def sync_folder(
    store: Store,
    folder: Path,
    *,
    url_base: str | None = None,
    on_file: Callable[[str, int], None] | None = None,
) -> Outcome:
    """Add what is new or changed in ``folder``; remove the articles added from it that are no
    longer there. A file that cannot be read now keeps its article as it was."""
    origin, _ = await asyncio.to_thread(_listing, folder)  # before anything is written
    outcome = await add_paths(store, [folder], url_base=url_base, on_file=on_file)
    _, present = await asyncio.to_thread(_listing, folder)
    for article in await store.kb_sources():
        if article.origin == origin and article.source not in present:
            await store.kb_remove(article.source)
            outcome.removed.append(article.source)
    return outcome


def _listing(folder: Path) -> tuple[str, set[str]]:
    """The folder as an origin (absolute), and the source names of the files in it now."""
    if not folder.is_dir():
        raise FileNotFoundError(folder)
    return str(folder.resolve()), {source for _path, source, _origin in find_documents([folder])}
