"""Adding help-centre files to the knowledge base, and syncing a folder with it.

Adding is idempotent by content hash: an unchanged file is not read again and changes nothing;
a changed one has its chunks replaced in one transaction. A file that cannot be read is named in
one line (``Outcome.failed``) and the others are still added. ``sync`` of a folder then removes
the articles added from that folder whose files are gone, and none other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from frontdesk.storage import ChunkIn, Store

from .chunks import chunk_events
from .documents import Event, Unreadable, find_documents, open_document

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
    on_read: Callable[[str, int], None] | None = None,
) -> Outcome:
    """Add the files at ``paths`` (files, or folders of them). ``on_read(source, n_bytes)`` is
    called as they are read (each chunk's bytes as it is written, a file's rest once it is
    done), for a progress bar that moves within a large file too. Raises FileNotFoundError for a
    missing path, before anything is written."""
    found = await asyncio.to_thread(find_documents, paths)
    outcome = Outcome()
    read = on_read or (lambda _source, _n: None)
    for path, source, origin in found:
        doc = None
        reading: _Reading | None = None
        try:
            doc = await asyncio.to_thread(open_document, path, source, url_base)
            before = await store.kb_hash(source)
            if before == doc.content_hash:
                outcome.unchanged.append(source)
            else:
                reading = _Reading(source, doc.n_bytes, read)
                outcome.chunks += await store.kb_replace(
                    source, title=doc.title, url=doc.url, content_hash=doc.content_hash,
                    n_bytes=doc.n_bytes, chunks=reading.chunks(doc.title, doc.events()),
                    origin=origin,
                )  # fmt: skip
                (outcome.updated if before is not None else outcome.added).append(source)
        except Unreadable as exc:
            outcome.failed.append(str(exc))
        left = (doc.n_bytes if doc is not None else 0) - (reading.done if reading else 0)
        read(source, left)
    if outcome.chunks >= OPTIMIZE_FROM_CHUNKS:
        await store.kb_optimize()
    return outcome


class _Reading:
    """One file's chunks as they are written, each reported with its size (``read``), the
    whole never more than the file's."""

    def __init__(self, source: str, n_bytes: int, read: Callable[[str, int], None]) -> None:
        self.source, self.n_bytes, self.read = source, n_bytes, read
        self.done = 0

    def chunks(self, title: str, events: Iterable[Event]) -> Iterator[ChunkIn]:
        for chunk in chunk_events(title, events):
            size = min(len(chunk.text.encode("utf-8")), self.n_bytes - self.done)
            self.done += size
            self.read(self.source, size)
            yield chunk


async def sync_folder(
    store: Store,
    folder: Path,
    *,
    url_base: str | None = None,
    on_read: Callable[[str, int], None] | None = None,
) -> Outcome:
    """Add what is new or changed in ``folder``; remove the articles added from it that are no
    longer there. A file that cannot be read now keeps its article as it was."""
    origin, _ = await asyncio.to_thread(_listing, folder)  # before anything is written
    outcome = await add_paths(store, [folder], url_base=url_base, on_read=on_read)
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
