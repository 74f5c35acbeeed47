"""What the benchmarks drive frontdesk with: requests in a closed loop, and the full frontdesk path
(gateway, Redis, worker, PostgreSQL) on a given backend, timed from the platform's side.

Benchmarks run as scripts (``python bench/NAME.py``), so this folder is on ``sys.path`` and they
import this module as ``harness``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from frontdesk.bots import Gateway, ReplyStream
from frontdesk.engine.backends import Backend
from frontdesk.engine.context import build_prompt
from frontdesk.engine.queue import RedisQueue
from frontdesk.engine.worker import Worker
from frontdesk.runtime import startup_heap_frozen
from frontdesk.settings import Settings
from frontdesk.storage import Store
from frontdesk.wire import ChatMessage, InboundMessage, ReplyDelta

TOPICS = [
    "lighthouses", "volcanoes", "honey bees", "the Moon", "sailing ships", "glaciers",
    "owls", "bridges", "deserts", "coral reefs", "trains", "castles", "rivers", "comets",
    "whales", "forests",
]  # fmt: skip


def question(n: int) -> str:
    return f"Request {n}: tell me about {TOPICS[n % len(TOPICS)]}, in detail."


@dataclass
class Run:
    """One closed-loop run: wall seconds, completion tokens, each request's time to first token,
    the CPU seconds this process spent (the engine core is a process of its own), and through
    frontdesk the reply deltas the channel got. Runs pooled into one (``pooled``) keep each
    run's tokens/s in ``rates``, in the order they ran. ``spent``: the CPU seconds of the run
    by whom (``cpu_seconds``)."""

    wall: float
    tokens: int
    ttft: list[float] = field(default_factory=list)
    cpu: float = 0.0
    deltas: int = 0
    rates: list[float] = field(default_factory=list)
    spent: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.tokens / self.wall


SERVERS = ("redis-server", "postgres")


def cpu_seconds() -> dict[str, float]:
    """The CPU seconds spent so far, by whom: this process (``here``: the clients, frontdesk's
    gateway and worker, vLLM's ``AsyncLLM``), its children (``engine``: vLLM's engine core),
    Redis's and PostgreSQL's servers (``servers``; a process that ends takes its own with it),
    the whole machine busy (``machine``), and what the hypervisor took from it (``stolen``)."""
    import psutil  # vLLM's dependency: only the engines' benchmark asks for it

    def used(process: psutil.Process) -> float:
        with contextlib.suppress(psutil.Error):  # gone meanwhile
            times = process.cpu_times()
            return float(times.user + times.system)
        return 0.0

    me = psutil.Process()
    spent = {"here": used(me), "engine": sum(used(p) for p in me.children(recursive=True))}
    spent["servers"] = sum(
        used(p) for p in psutil.process_iter(["name"]) if p.info["name"] in SERVERS
    )
    machine = psutil.cpu_times()
    busy = machine.user + machine.nice + machine.system + machine.irq + machine.softirq
    spent["machine"], spent["stolen"] = busy, machine.steal
    return spent


async def closed_loop(
    request: Callable[[int], Awaitable[tuple[float, int]]],
    requests: int,
    in_flight: int,
    pause_s: float = 0.0,
    measured: bool = False,
) -> Run:
    """``in_flight`` clients, each sending its next request when the last is answered (after
    ``pause_s``), until ``requests`` are done. ``request(n)`` returns (time to first token,
    tokens or 0). ``measured``: whose CPU the run took, too (``Run.spent``)."""
    pending = iter(range(requests))
    run = Run(0.0, 0)
    before = cpu_seconds() if measured else {}

    async def client() -> None:
        for n in pending:
            if pause_s:
                await asyncio.sleep(pause_s)
            ttft, tokens = await request(n)
            run.ttft.append(ttft)
            run.tokens += tokens

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client() for _ in range(in_flight)))
    run.wall, run.cpu = time.perf_counter() - started, time.process_time() - cpu
    if measured:
        run.spent = {who: spent - before[who] for who, spent in cpu_seconds().items()}
    return run


class TimingChannel:
    """A channel that sends one message per request and times its reply's first text.
    ``shows_every_s``: how often at most it shows a reply's progress (``Channel``), as Telegram
    (1.5 s) and Slack (1 s) do; 0: each delta as it comes, as the console does."""

    name = "bench"

    def __init__(self, shows_every_s: float = 0.0) -> None:
        self.gateway: Gateway | None = None
        self.shows_every_s = shows_every_s
        self.deltas = 0  # every reply's, as they came
        self._first: dict[str, float] = {}

    async def start(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def stop(self) -> None:
        pass

    async def deliver(self, reply: ReplyStream) -> None:
        async for delta in reply:
            self.deltas += 1
            if delta.error:
                raise RuntimeError(f"turn failed: {delta.error}")
            if delta.text:
                self._first.setdefault(reply.inbound.message_id, time.perf_counter())

    async def say(self, chat: str, text: str) -> float:
        """Send ``text`` in ``chat``; once the whole reply is in, its time to first text."""
        assert self.gateway is not None
        msg = InboundMessage(
            platform=self.name, chat_id=chat, user_id=f"u-{chat}", user_name="Bench",
            message_id=uuid.uuid4().hex, text=text,
        )  # fmt: skip
        started = time.perf_counter()
        task = await self.gateway.handle(msg, self)
        assert task is not None
        await task
        return self._first.pop(msg.message_id) - started


@contextlib.asynccontextmanager
async def frontdesk_path(
    settings: Settings, backend: Backend, shows_every_s: float = 0.0
) -> AsyncIterator[TimingChannel]:
    """Store, a gateway and a worker (each with its own Redis connection, as separate processes
    would have) on ``backend``; the channel that talks to them (``TimingChannel``)."""
    assert settings.redis_url is not None
    async with contextlib.AsyncExitStack() as stack:
        store = Store(settings.database_url)
        await store.start(migrate=True, warm=True)  # as frontdesk's processes start theirs
        stack.push_async_callback(store.stop)
        queues = []
        for consumer in ("worker", "gateway"):
            queue = RedisQueue(settings.redis_url, consumer=consumer, prefix=settings.queue_prefix)
            await queue.start()
            stack.push_async_callback(queue.stop)
            queues.append(queue)
        worker = Worker(settings, queues[0], store, backend)
        await worker.start()
        stack.push_async_callback(worker.stop)
        channel = TimingChannel(shows_every_s)
        gateway = Gateway(settings, queues[1], store, [channel])
        await gateway.start()
        stack.push_async_callback(gateway.stop)
        yield channel
    client = aioredis.from_url(settings.redis_url)
    await client.delete(*[k async for k in client.scan_iter(match=f"{settings.queue_prefix}:*")])
    await client.aclose()


async def stored_tokens(database_url: str) -> int:
    """Completion tokens stored so far: what the frontdesk path produced."""
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return int(await conn.fetchval("SELECT coalesce(sum(tokens_out), 0) FROM messages"))
    finally:
        await conn.close()


async def through_frontdesk(
    settings: Settings,
    backend: Backend,
    requests: int,
    in_flight: int,
    shows_every_s: float = 0.0,
    pause_s: float = 0.0,
    fresh: Callable[[], Awaitable[object]] | None = None,
    measured: bool = False,
) -> Run:
    """``requests`` questions, each in a new conversation, through the full frontdesk path, to
    a channel that shows progress every ``shows_every_s`` (``TimingChannel``); each client
    pauses ``pause_s`` before each (``closed_loop``). The path's processes are new each run, so
    one question a client goes first, untimed and uncounted: the engine was warmed once at its
    start, and the path's first turns would otherwise pay for what a running gateway and worker
    did long before (the turn's statements prepared on each new database connection; compiling
    them, 3 to 15 ms on a run's first token here before, is done as the store starts warm, as
    frontdesk's processes start theirs). ``fresh``, awaited after those, gives the timed
    requests the engine's state the direct way's start from (an empty prefix cache or KV
    cache). ``measured``: whose CPU the timed requests took, too (``closed_loop``)."""
    run_id = uuid.uuid4().hex[:6]
    async with frontdesk_path(settings, backend, shows_every_s) as channel:
        # questions of their own: an engine that keeps the last request's cache (llama.cpp's
        # server) must not find a timed question's whole prompt in it
        await asyncio.gather(
            *(channel.say(f"{run_id}-warm-{c}", question(requests + c)) for c in range(in_flight))
        )
        channel.deltas = 0
        if fresh is not None:
            await fresh()
        before = await stored_tokens(settings.database_url)

        async def request(n: int) -> tuple[float, int]:
            return await channel.say(f"{run_id}-{n}", question(n)), 0

        run = await closed_loop(request, requests, in_flight, pause_s, measured)
        run.deltas = channel.deltas
    run.tokens = await stored_tokens(settings.database_url) - before
    return run


def bench_settings(database_url: str, redis_url: str, **options: Any) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=database_url,
        redis_url=redis_url,
        queue_prefix=f"fdbench:{uuid.uuid4().hex[:8]}",
        temperature=0.0,
        **options,
    )


def first_prompt(backend: Backend, settings: Settings, n: int) -> Any:
    """The prompt the worker builds for request ``n`` in a new conversation."""
    history = [ChatMessage("user", question(n))]
    return build_prompt(backend, settings.system_prompt, history, 10**6).prompt


async def alternate(
    direct: Callable[[], Awaitable[Run]], frontdesk: Callable[[], Awaitable[Run]], rounds: int
) -> tuple[Run, Run]:
    """``rounds`` runs each way, in alternating order (ABBA…), pooled. Each run serves with the
    heap frozen as frontdesk's processes serve (``startup_heap_frozen``), the direct way's too:
    each starts from the same collected heap."""
    runs: dict[str, list[Run]] = {"direct": [], "frontdesk": []}
    ways = {"direct": direct, "frontdesk": frontdesk}
    for r in range(rounds):
        for way in sorted(ways, reverse=bool(r % 2)):
            with startup_heap_frozen():
                runs[way].append(await ways[way]())
    return pooled(runs["direct"]), pooled(runs["frontdesk"])


def pooled(runs: list[Run]) -> Run:
    """The runs of one way and level as one: their tokens over their time."""
    return Run(
        wall=sum(r.wall for r in runs),
        tokens=sum(r.tokens for r in runs),
        ttft=[t for r in runs for t in r.ttft],
        cpu=sum(r.cpu for r in runs),
        deltas=sum(r.deltas for r in runs),
        rates=[r.rate for r in runs],
        spent={who: sum(r.spent.get(who, 0.0) for r in runs) for who in runs[0].spent},
    )


# ---------------------------------------------------------------- a first token, step by step

# The steps of a turn on its way to its first text, each between two marks that ``Steps`` makes
# as the gateway's, the worker's and the backend's calls begin and end, in the order they come.
STEPS = (
    ("the message stored (gateway)", "store.start", "store.end"),
    ("queued, read by the worker", "submit.start", "received"),
    ("the conversation's lease", "lease.start", "lease.end"),
    ("history read", "history.start", "history.end"),
    ("prompt built", "prompt.start", "prompt.end"),
    ("the engine's first text", "engine.start", "engine.text"),
    ("through Redis to the gateway", "engine.text", "gateway.text"),
    ("the whole way, to the channel", "said", "channel.text"),
)


class Steps:
    """Marks the moments a turn's way to its first text passes (``STEPS``), with one turn in
    flight: the calls of the gateway, the worker and the backend are wrapped in place while it is
    entered (their behaviour unchanged), and ``turn`` times one message through a channel."""

    def __init__(self, backend: Backend) -> None:
        self.marks: dict[str, float] = {}
        self.times: dict[str, list[float]] = {step: [] for step, _start, _end in STEPS}
        self._backend = backend
        self._restore: list[tuple[Any, str, Any]] = []

    def _mark(self, name: str) -> None:
        self.marks.setdefault(name, time.perf_counter())

    def _around(self, owner: Any, method: str, start: str, end: str) -> None:
        call = getattr(owner, method)
        mark = self._mark

        async def timed(*args: Any, **kwargs: Any) -> Any:
            mark(start)
            result = await call(*args, **kwargs)
            mark(end)
            return result

        self._swap(owner, method, timed)

    def _swap(self, owner: Any, method: str, new: Any) -> None:
        """``owner.method`` is ``new`` until exit (then what ``owner`` itself held, or nothing:
        what it inherits, or its class's, again)."""
        self._restore.append((owner, method, vars(owner).get(method)))
        setattr(owner, method, new)

    def __enter__(self) -> Steps:
        mark = self._mark
        self._around(Store, "record_user_message", "store.start", "store.end")
        self._around(RedisQueue, "lease", "lease.start", "lease.end")
        self._around(Store, "turn_context", "history.start", "history.end")
        submit, receive = RedisQueue.submit, RedisQueue.receive

        async def submitted(queue: RedisQueue, *args: Any, **kwargs: Any) -> Any:
            mark("submit.start")
            return await submit(queue, *args, **kwargs)

        async def received(queue: RedisQueue, *args: Any, **kwargs: Any) -> Any:
            deliveries = await receive(queue, *args, **kwargs)
            if deliveries:
                mark("received")
            return deliveries

        self._swap(RedisQueue, "submit", submitted)
        self._swap(RedisQueue, "receive", received)
        fitted = Worker._fitted

        def prompt(worker: Worker, *args: Any, **kwargs: Any) -> Any:
            mark("prompt.start")
            built = fitted(worker, *args, **kwargs)
            mark("prompt.end")
            return built

        self._swap(Worker, "_fitted", prompt)
        stream = self._backend.stream

        async def streamed(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            mark("engine.start")
            # closed with this one (the worker closes a stream it stops early)
            async with contextlib.aclosing(stream(*args, **kwargs)) as chunks:
                async for chunk in chunks:
                    if chunk.text:
                        mark("engine.text")
                    yield chunk

        self._swap(self._backend, "stream", streamed)
        route = Gateway._route  # each delta the gateway reads from its reply stream

        def routed(gateway: Gateway, delta: ReplyDelta, **kwargs: Any) -> None:
            if delta.text:
                mark("gateway.text")
            route(gateway, delta, **kwargs)

        self._swap(Gateway, "_route", routed)
        return self

    def __exit__(self, *_exc: object) -> None:
        for owner, method, old in reversed(self._restore):
            if old is None:
                delattr(owner, method)
            else:
                setattr(owner, method, old)
        self._restore.clear()

    async def turn(self, channel: TimingChannel, chat: str, text: str, *, keep: bool) -> None:
        """One message through ``channel``; ``keep``: each step's time is kept (seconds)."""
        self.marks.clear()
        self._mark("said")
        first = await channel.say(chat, text)
        self.marks["channel.text"] = self.marks["said"] + first
        for step, start, end in STEPS if keep else ():
            self.times[step].append(self.marks[end] - self.marks[start])


async def first_token_steps(settings: Settings, backend: Backend, turns: int) -> Steps:
    """``turns`` questions, one at a time, each in a new conversation, through the full frontdesk
    path on ``backend``, timed step by step (``Steps``); two more before them, not kept (the
    worker's first read of the queue began before the calls were wrapped)."""
    run_id = uuid.uuid4().hex[:6]
    async with frontdesk_path(settings, backend) as channel:
        with Steps(backend) as steps:
            for n in range(turns + 2):
                await steps.turn(channel, f"{run_id}-steps-{n}", question(n), keep=n >= 2)
    return steps
