"""What the framework costs per turn: gateway → Redis → worker → PostgreSQL, with an instant engine.

Runs N turns with the ``fixed`` backend (a constant reply, no model), so every millisecond measured
is frontdesk's own: storing the message, queueing the turn, reading history, building the prompt,
streaming the reply back, storing it, acking. In the same run it times the raw Redis Streams hop
for the same N and concurrency (XADD → XREADGROUP → reply XADD → XACK, no framework) as the
baseline, and prints the ratio, so the figure is comparable across noisy machines.

Then, at ``--in-flight``, the framework with telemetry off and on in the same run: on, each
process serves /metrics (``frontdesk.ops``, with its readiness checks of Redis and the database)
scraped every second, and logs JSON lines at INFO to a file; off, the metrics are not counted
(``frontdesk.metrics``' objects swapped for ones that do nothing) and nothing is logged.

With ``--profile FILE``, instead: one run of the framework in one process at ``--in-flight``,
its measured turns under cProfile (the event loop's thread: the gateway's and the worker's
Python), and a summary of where its CPU went: the share of each package (redis-py, SQLAlchemy,
asyncpg, asyncio, frontdesk, ...) by time spent in its own functions, and the function calls a
turn makes, printed, then the top functions written to FILE.

With ``--parsers``, instead: the CPU that reading one of frontdesk's queue entries takes with
redis-py's own reply parser (Python) and with hiredis's (C), taking turns in one process.

With ``--packing``, instead: the Redis commands of one run of the framework (one process, at
``--in-flight``), recorded, then packed again with redis-py's own packing (every argument
checked and encoded in Python) and with the queue's (``frontdesk.engine.queue.packing``: one
call to hiredis a command), taking turns: the CPU a turn's commands take to pack each way.

With ``--first-turns N``, instead: a process's first turns, one in flight, each turn a chat's first
message: N rounds, each a new process started cold (its store as an admin command's: the hot
statements compiled at their first use) and a new process started warm (as frontdesk's gateway
and worker start theirs: ``Store.start(warm=True)``, compiled at start), in turn; each process's
first turn, its second and third, the p50 of its 4th to 20th (the pool's first connections) and
of its 21st to 40th.

With ``--new-chats N``, instead: N new chats' first messages at the same moment, stored by one
store as a gateway stores them (``record_user_message``), 25 bursts of them (the first 5
untimed), each a moment after the last: each message's time until it is stored, and the
burst's, p50 and p90.

Every process runs on the event loop that frontdesk's commands run on (uvloop where installed),
and serves its turns with its startup heap frozen, as frontdesk's processes serve theirs
(``frontdesk.runtime.startup_heap_frozen``); the raw hop's turns run so too, in the same process.

Usage: python bench/pipeline.py [--turns 3000] [--in-flight 64] [--pairs 2] [--telemetry-only]
       python bench/pipeline.py --profile FILE [--turns 3000] [--in-flight 64]
       python bench/pipeline.py --parsers
       python bench/pipeline.py --packing [--turns 3000] [--in-flight 64]
       python bench/pipeline.py --first-turns 5
       python bench/pipeline.py --new-chats 32
Needs Redis and PostgreSQL on 127.0.0.1 (a scratch database is created and dropped).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import logging
import multiprocessing
import pstats
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from common import on_frontdesk_loop, pct, scratch_database
from harness import TimingChannel

from frontdesk import logfmt, metrics
from frontdesk.bots import Gateway
from frontdesk.engine.backends.fixed import FixedReplyBackend
from frontdesk.engine.queue import RedisQueue
from frontdesk.engine.worker import Worker
from frontdesk.ops import OpsServer
from frontdesk.runtime import startup_heap_frozen
from frontdesk.settings import Settings
from frontdesk.storage import Store
from frontdesk.wire import InboundMessage

USERS = 64


async def drive(
    turn: Callable[[int], Awaitable[None]], turns: int, in_flight: int
) -> tuple[float, float, list[float]]:
    """``in_flight`` users, each sending its next message when its reply is in, for ``turns``
    turns in all. Returns wall seconds, CPU seconds of this process, and each turn's latency."""
    latencies: list[float] = []
    remaining = turns

    async def user(n: int) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            # 64 conversations whatever the concurrency, so histories grow alike in every row
            await turn((n + remaining) % USERS if in_flight < USERS else n)
            latencies.append(time.perf_counter() - start)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(user(n) for n in range(in_flight)))
    return time.perf_counter() - wall0, time.process_time() - cpu0, latencies


class _Uncounted:
    """Stands in for a metric when telemetry is off: every call does nothing."""

    def labels(self, *_args: object) -> _Uncounted:
        return self

    def __getattr__(self, _name: str) -> Callable[..., Any]:
        return lambda *_a, **_k: contextlib.nullcontext()


METRICS = {name: value for name, value in vars(metrics).items() if name.isupper()}


def counting_us(repeat: int = 20_000) -> float:
    """Microseconds of CPU the metrics a turn counts take, called in a loop: what the
    throughput ratio below cannot resolve on a noisy machine."""
    from frontdesk.wire import Turn

    turn = Turn(1, 1, gateway="g", route={"platform": "bench"})
    start = time.process_time()
    for _ in range(repeat):
        platform = metrics.platform_of(turn)
        metrics.MESSAGES.labels(platform).inc()
        with metrics.IN_FLIGHT.track_inprogress():
            metrics.TURNS.labels(platform, "answered").inc()
            metrics.FIRST_TOKEN.labels(platform).observe(0.2)
            metrics.TURN_SECONDS.labels(platform).observe(0.4)
            metrics.TOKENS.labels("in").inc(100)
            metrics.TOKENS.labels("out").inc(20)
    return (time.process_time() - start) / repeat * 1e6


def _telemetry(on: bool) -> None:
    """Count metrics, or not (this process)."""
    for name, value in METRICS.items():
        setattr(metrics, name, value if on else _Uncounted())


@contextlib.asynccontextmanager
async def _observed(queue: RedisQueue, store: Store) -> Any:
    """What an operator runs beside a process: /metrics served (scraped by ``_scrape``), and
    JSON log lines at INFO into a file. Yields the port."""

    async def redis() -> None:
        metrics.observe_queue(await queue.status())

    ops = OpsServer("127.0.0.1", 0, {"redis": redis, "database": store.ping})
    await ops.start()
    with tempfile.TemporaryFile("w") as sink:
        handler = logging.StreamHandler(sink)
        handler.setFormatter(logfmt.JsonFormatter())
        handler.addFilter(logfmt.TurnFilter())
        root = logging.getLogger()
        root.addHandler(handler)
        level = root.level
        root.setLevel(logging.INFO)
        try:
            yield ops.port
        finally:
            root.removeHandler(handler)
            root.setLevel(level)
            await ops.stop()


async def _scrape(ports: list[int], stop: asyncio.Event) -> int:
    """GET every port's /metrics each second until ``stop``; how many scrapes there were."""
    scrapes = 0
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            for port in ports:
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    await response.read()
                scrapes += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    return scrapes


async def framework(
    db_url: str,
    redis_url: str,
    turns: int,
    in_flight: int,
    warmup: int,
    *,
    split: bool,
    telemetry: bool | None = None,
    profile: cProfile.Profile | None = None,
    measuring: Callable[[bool], None] | None = None,
    warm: bool = True,
) -> tuple[float, float, list[float]]:
    """The framework's turns. ``split``: the worker runs in its own process (scaled mode), and
    the CPU figure adds both processes'. ``telemetry``: on or off (``_observed``, ``_telemetry``)
    in every process; None: as it is (counted, neither served nor logged). ``profile``: enabled
    for the measured turns only (not the start or the warm-up); ``measuring`` is called with True
    before them and False after. ``warm``: the store started as frontdesk's processes start
    theirs (``Store.start(warm=True)``), or as an admin command's."""
    prefix = f"fdbench:{uuid.uuid4().hex[:8]}"
    settings = _settings(db_url, redis_url, prefix, in_flight)
    if telemetry is not None:
        _telemetry(telemetry)
    ports: list[int] = []
    async with contextlib.AsyncExitStack() as stack:
        store = Store(db_url)
        await store.start(migrate=True, warm=warm)
        stack.push_async_callback(store.stop)
        gw_queue = RedisQueue(redis_url, consumer="gateway", prefix=prefix)
        await gw_queue.start()
        stack.push_async_callback(gw_queue.stop)
        if telemetry:
            ports.append(await stack.enter_async_context(_observed(gw_queue, store)))
        if split:
            ctx = multiprocessing.get_context("spawn")
            pipe, child_end = ctx.Pipe()
            proc = ctx.Process(
                target=_worker_process,
                args=(db_url, redis_url, prefix, in_flight, child_end, telemetry),
            )
            proc.start()
            ready = await asyncio.to_thread(pipe.recv)
            assert ready[0] == "ready"
            if ready[1]:
                ports.append(ready[1])
        else:
            await _start_worker(stack, settings, store)
        channel = TimingChannel()
        run = uuid.uuid4().hex[:8]  # each run its own chats

        async def turn(user: int) -> None:
            text = f"Message from user {user}: what are your opening hours?"
            await channel.say(f"{run}-{user}", text)

        gateway = Gateway(settings, gw_queue, store, [channel])
        await gateway.start()
        stack.push_async_callback(gateway.stop)
        stack.enter_context(startup_heap_frozen())  # as frontdesk's processes serve

        await drive(turn, warmup, in_flight)
        if split:
            pipe.send("cpu")
            child_cpu0 = await asyncio.to_thread(pipe.recv)
        stop_scraping = asyncio.Event()
        scraping = asyncio.create_task(_scrape(ports, stop_scraping))
        if profile is not None:
            profile.enable()
        if measuring is not None:
            measuring(True)
        wall, cpu, latencies = await drive(turn, turns, in_flight)
        if measuring is not None:
            measuring(False)
        if profile is not None:
            profile.disable()
        stop_scraping.set()
        scrapes = await scraping
        assert not telemetry or scrapes > 0
        if split:
            pipe.send("cpu")
            cpu += await asyncio.to_thread(pipe.recv) - child_cpu0
            pipe.send("stop")
            await asyncio.to_thread(proc.join, 30)
    client = aioredis.from_url(redis_url)
    await client.delete(*[k async for k in client.scan_iter(match=f"{prefix}:*")])
    await client.aclose()
    return wall, cpu, latencies


def _worker_process(
    db_url: str, redis_url: str, prefix: str, in_flight: int, pipe: Any, telemetry: bool | None
) -> None:
    """A worker in a process of its own, as in scaled mode. Says ("ready", its /metrics port or
    0), answers "cpu" with its CPU seconds so far, and stops on "stop"."""

    async def serve() -> None:
        settings = _settings(db_url, redis_url, prefix, in_flight)
        if telemetry is not None:
            _telemetry(telemetry)
        async with contextlib.AsyncExitStack() as stack:
            store = Store(db_url)
            await store.start(warm=True)
            stack.push_async_callback(store.stop)
            port = 0
            if telemetry:
                queue = RedisQueue(redis_url, consumer="observer", prefix=prefix)
                await queue.start()
                stack.push_async_callback(queue.stop)
                port = await stack.enter_async_context(_observed(queue, store))
            await _start_worker(stack, settings, store)
            stack.enter_context(startup_heap_frozen())
            pipe.send(("ready", port))
            while await asyncio.to_thread(pipe.recv) != "stop":
                pipe.send(time.process_time())

    on_frontdesk_loop(serve())


async def _start_worker(stack: contextlib.AsyncExitStack, settings: Settings, store: Store) -> None:
    """A worker on the fixed-reply engine with a Redis connection of its own (as a worker process
    has), stopped by ``stack``."""
    assert settings.redis_url is not None
    queue = RedisQueue(settings.redis_url, consumer="worker", prefix=settings.queue_prefix)
    await queue.start()
    stack.push_async_callback(queue.stop)
    worker = Worker(settings, queue, store, FixedReplyBackend(settings.fixed_reply))
    await worker.start()
    stack.push_async_callback(worker.stop)


def _settings(db_url: str, redis_url: str, prefix: str, in_flight: int) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=db_url,
        redis_url=redis_url,
        engine="fixed",
        fixed_reply="We are open from 9 to 5, Monday to Friday.",
        worker_concurrency=in_flight,
        queue_prefix=prefix,
    )


async def raw_hop(redis_url: str, turns: int, in_flight: int) -> tuple[float, float, list[float]]:
    """The same traffic with bare redis-py: XADD a turn, a consumer XREADGROUPs it, XADDs a reply
    to the gateway's stream and XACKs; the gateway XREADs the reply."""
    prefix = f"fdraw:{uuid.uuid4().hex[:8]}"
    turns_key, replies_key = f"{prefix}:turns", f"{prefix}:replies"
    gw = aioredis.from_url(redis_url, decode_responses=True)
    wk = aioredis.from_url(redis_url, decode_responses=True)
    await wk.xgroup_create(turns_key, "workers", id="0", mkstream=True)
    waiting: dict[str, asyncio.Future[None]] = {}
    stop = asyncio.Event()

    async def consumer() -> None:
        while not stop.is_set():
            got = await wk.xreadgroup("workers", "w", {turns_key: ">"}, count=in_flight, block=100)
            for _key, entries in got or ():
                for entry_id, fields in entries:
                    await wk.xadd(replies_key, {"t": fields["t"], "text": "ok"})
                    await wk.xack(turns_key, "workers", entry_id)

    async def reply_reader() -> None:
        last = "0-0"
        while not stop.is_set():
            got = await gw.xread({replies_key: last}, count=500, block=100)
            for _key, entries in got or ():
                for entry_id, fields in entries:
                    last = entry_id
                    fut = waiting.pop(fields["t"], None)
                    if fut is not None:
                        fut.set_result(None)

    async def turn(_user: int) -> None:
        turn_id = uuid.uuid4().hex
        fut = asyncio.get_running_loop().create_future()
        waiting[turn_id] = fut
        await gw.xadd(turns_key, {"t": turn_id, "text": "what are your opening hours?"})
        await fut

    tasks = [asyncio.create_task(consumer()), asyncio.create_task(reply_reader())]
    with startup_heap_frozen():  # as the framework's turns run: the same heap, out of the way
        await drive(turn, min(turns, 200), in_flight)  # warm-up
        result = await drive(turn, turns, in_flight)
    stop.set()
    await asyncio.gather(*tasks)
    await gw.delete(turns_key, replies_key)
    await gw.aclose()
    await wk.aclose()
    return result


async def parsers(redis_url: str, rounds: int = 7, reads: int = 200) -> dict[str, float]:
    """Microseconds of CPU to read one queue entry with each of redis-py's RESP3 reply parsers:
    its own, in Python, and hiredis's, in C (which redis-py takes where hiredis is installed).
    The entries are what frontdesk queues: 64 turns and 64 reply deltas, read back 64 at a time;
    the parsers take turns, ``rounds`` times, and each one's median is returned."""
    from redis._parsers import _AsyncHiredisParser, _AsyncRESP3Parser

    from frontdesk.wire import ReplyDelta, Turn, encode

    key = f"fdparse:{uuid.uuid4().hex[:8]}"
    route = {"platform": "telegram", "chat_id": 123456789, "message_id": 42}
    clients = {
        name: aioredis.Redis(connection_pool=aioredis.ConnectionPool.from_url(
            redis_url, parser_class=parser, protocol=3, decode_responses=True))
        for name, parser in (("python", _AsyncRESP3Parser), ("hiredis", _AsyncHiredisParser))
    }  # fmt: skip
    writer = clients["python"]
    for n in range(64):
        await writer.xadd(f"{key}:turns", encode(Turn(n, n, gateway="g", route=route)))
        await writer.xadd(f"{key}:replies", encode(ReplyDelta(uuid.uuid4().hex, n, "Open 9-5.")))
    times: dict[str, list[float]] = {name: [] for name in clients}
    for _ in range(rounds):
        for name, client in clients.items():
            start = time.process_time()
            for _ in range(reads):
                await client.xrange(f"{key}:turns", count=64)
                await client.xrange(f"{key}:replies", count=64)
            times[name].append((time.process_time() - start) / (reads * 128) * 1e6)
    await writer.delete(f"{key}:turns", f"{key}:replies")
    for client in clients.values():
        await client.aclose()
    return {name: sorted(each)[len(each) // 2] for name, each in times.items()}


async def packing(
    db_url: str, redis_url: str, turns: int, in_flight: int, rounds: int = 7
) -> tuple[float, float, dict[str, float]]:
    """The commands the gateway and the worker sent to Redis in one run of ``turns`` turns (its
    measured turns, one process), packed again by each packing, ``rounds`` times taking turns:
    commands a turn, arguments a turn, and each packing's median microseconds of CPU a turn."""
    from frontdesk.engine.queue.packing import packed_by_hiredis

    queue_connection = packed_by_hiredis(aioredis.Connection)
    recorded: list[tuple[Any, ...]] = []
    pack = queue_connection.pack_command
    recording = [False]

    def recorder(self: aioredis.Connection, *args: Any) -> list[bytes]:
        if recording[0]:
            recorded.append(args)
        return pack(self, *args)

    def measuring(on: bool) -> None:
        recording[0] = on

    queue_connection.pack_command = recorder  # type: ignore[method-assign]
    try:
        await framework(db_url, redis_url, turns, in_flight, 200, split=False, measuring=measuring)
    finally:
        queue_connection.pack_command = pack  # type: ignore[method-assign]
    packers = {"redis-py": aioredis.Connection(), "hiredis": queue_connection()}
    times: dict[str, list[float]] = {name: [] for name in packers}
    for _ in range(rounds):
        for name, connection in packers.items():
            start = time.process_time()
            for args in recorded:
                connection.pack_command(*args)
            times[name].append((time.process_time() - start) / turns * 1e6)
    arguments = sum(len(args) for args in recorded)
    each = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    return len(recorded) / turns, arguments / turns, each


PACKAGES = {  # where a function's file lies -> the name the summary gives it
    "/redis/": "redis-py", "/sqlalchemy/": "SQLAlchemy", "/asyncpg/": "asyncpg",
    "/asyncio/": "asyncio", "/pydantic": "pydantic",
    "/aiohttp/": "aiohttp", "/prometheus_client/": "prometheus-client", "/uvloop/": "uvloop",
}  # fmt: skip


REPO = str(Path(__file__).resolve().parent.parent) + "/"


def _package(filename: str) -> str:
    if filename.startswith("~") or filename.startswith("<"):
        return "built-ins (sockets, json, ...)"
    for part, name in PACKAGES.items():
        if part in filename:
            return name
    return "frontdesk" if filename.startswith(REPO) and "-packages/" not in filename else "other"


async def profiled(db_url: str, redis_url: str, turns: int, in_flight: int, path: str) -> None:
    """One run of the framework in one process under cProfile (its measured turns): each
    package's share of the CPU spent in its own functions, and the Python function calls a turn
    makes, printed; the top 60 functions (own and cumulative time) to ``path``. The calls a turn
    vary little from run to run where the time varies a lot: a change's effect on them shows in
    one run each way."""
    # CPU time, not wall time: the event loop's wait in epoll is not work
    profile = cProfile.Profile(time.process_time)
    wall, cpu, _lat = await framework(
        db_url, redis_url, turns, in_flight, 200, split=False, profile=profile
    )
    stats = pstats.Stats(profile)
    shares: dict[str, float] = {}
    total = 0.0
    for (filename, _line, _name), (_cc, _nc, own, _cum, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        shares[_package(filename)] = shares.get(_package(filename), 0.0) + own
        total += own
    print(f"profile of {turns} turns at {in_flight} in flight, one process: {turns / wall:.0f} "
          f"turns/s, {cpu / turns * 1000:.2f} ms of CPU a turn (slower under the profiler), "
          f"{stats.total_calls / turns:.0f} function calls a turn")  # type: ignore[attr-defined]  # fmt: skip
    print(f"{'package':>32} {'share of CPU':>13}")
    for name, own in sorted(shares.items(), key=lambda item: -item[1]):
        print(f"{name:>32} {own / total:>13.1%}")
    out = io.StringIO()
    for order in ("tottime", "cumulative"):
        pstats.Stats(profile, stream=out).strip_dirs().sort_stats(order).print_stats(60)
    await asyncio.to_thread(Path(path).write_text, out.getvalue())
    print(f"top functions by own and by cumulative time: {path}")


FIRST_TURNS = 40


def _first_turns_process(db_url: str, redis_url: str, warm: bool, pipe: Any) -> None:
    """One fresh process's first ``FIRST_TURNS`` turns at one in flight (``--first-turns``):
    sends their latencies, in order."""
    _wall, _cpu, latencies = on_frontdesk_loop(
        framework(db_url, redis_url, FIRST_TURNS, 1, 0, split=False, warm=warm)
    )
    pipe.send(latencies)


async def first_turns(db_url: str, redis_url: str, rounds: int) -> dict[str, list[list[float]]]:
    """``rounds`` fresh processes started cold and as many started warm, in turn: each one's
    turn latencies (s). Every turn is a new chat's first message (``drive`` at one in flight
    cycles through the benchmark's 64 users)."""
    ctx = multiprocessing.get_context("spawn")
    each: dict[str, list[list[float]]] = {"cold": [], "warm": []}
    for _ in range(rounds):
        for how in each:
            pipe, child_end = ctx.Pipe()
            proc = ctx.Process(
                target=_first_turns_process, args=(db_url, redis_url, how == "warm", child_end)
            )
            proc.start()
            each[how].append(await asyncio.to_thread(pipe.recv))
            await asyncio.to_thread(proc.join, 30)
    return each


def report_first_turns(each: dict[str, list[list[float]]]) -> None:
    print(f"a process's first {FIRST_TURNS} turns, one in flight, each a chat's first message "
          "(ms; each cell the lowest-highest (median) of the processes):")  # fmt: skip
    spans = {"1st": (0, 1), "2nd-3rd": (1, 3), "4th-20th p50": (3, 20), "21st-40th p50": (20, 40)}
    print(f"{'store':>6} " + " ".join(f"{name:>20}" for name in spans))
    for how, runs in each.items():
        cells = []
        for lo, hi in spans.values():
            values = [statistics.median(run[lo:hi]) * 1000 for run in runs]
            cells.append(f"{min(values):.1f}-{max(values):.1f} ({statistics.median(values):.1f})")
        print(f"{how:>6} " + " ".join(f"{cell:>20}" for cell in cells))
    print("cold: the store as an admin command's (statements compiled at their first use); "
          "warm: as frontdesk's\ngateway and worker start theirs (compiled at start).")  # fmt: skip


async def new_chats(db_url: str, chats: int) -> tuple[list[float], list[float]]:
    """``chats`` new chats' first messages at once, 25 bursts (5 untimed): each message's time
    until stored, and each burst's (s)."""
    each: list[float] = []
    bursts: list[float] = []
    store = Store(db_url)
    await store.start(migrate=True, warm=True)  # as a gateway's store starts
    try:
        with startup_heap_frozen():
            for burst in range(25):
                run = uuid.uuid4().hex[:8]

                async def stored(chat: int, run: str = run) -> float:
                    started = time.perf_counter()
                    await store.record_user_message(InboundMessage(
                        platform="telegram", chat_id=f"{run}-{chat}", user_id=str(chat),
                        user_name="Ada", message_id="1", text="What are your opening hours?",
                    ))  # fmt: skip
                    return time.perf_counter() - started

                started = time.perf_counter()
                times = await asyncio.gather(*(stored(chat) for chat in range(chats)))
                if burst >= 5:
                    bursts.append(time.perf_counter() - started)
                    each.extend(times)
                await asyncio.sleep(0.05)
    finally:
        await store.stop()
    return each, bursts


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=3000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--pairs", type=int, default=2, help="telemetry off/on runs of each")
    parser.add_argument("--telemetry-only", action="store_true", help="only the telemetry rows")
    parser.add_argument("--profile", metavar="FILE", help="profile one run instead (see above)")
    parser.add_argument("--parsers", action="store_true", help="time the Redis reply parsers")
    parser.add_argument("--packing", action="store_true", help="time the Redis command packing")
    parser.add_argument("--first-turns", type=int, metavar="N", help="a process's first turns")
    parser.add_argument("--new-chats", type=int, metavar="N", help="N new chats' messages at once")
    args = parser.parse_args()

    if args.new_chats:
        async with scratch_database(args.pg) as db_url:
            each, bursts = await new_chats(db_url, args.new_chats)
        print(f"{args.new_chats} new chats' first messages at once, stored by one store, "
              f"{len(bursts)} bursts:\n  each message until stored: p50 {pct(each, 50) * 1000:.1f} "
              f"ms, p90 {pct(each, 90) * 1000:.1f} ms\n  the whole burst: p50 "
              f"{pct(bursts, 50) * 1000:.1f} ms, p90 {pct(bursts, 90) * 1000:.1f} ms")  # fmt: skip
        return

    if args.first_turns:
        async with scratch_database(args.pg) as db_url:
            report_first_turns(await first_turns(db_url, args.redis, args.first_turns))
        return

    if args.profile:
        async with scratch_database(args.pg) as db_url:
            await profiled(db_url, args.redis, args.turns, args.in_flight, args.profile)
        return
    if args.parsers:
        each = await parsers(args.redis)
        print("redis-py's reply parsers, reading frontdesk's queue entries (64 turns and 64 "
              "reply deltas, 64 at a time),\nCPU an entry, median of 7 rounds taken in turn:")  # fmt: skip
        for name, us in each.items():
            print(f"{name:>8} {us:>7.1f} us")
        print(f"{'ratio':>8} {each['python'] / each['hiredis']:>7.1f}x (python / hiredis)")
        return

    if args.packing:
        async with scratch_database(args.pg) as db_url:
            commands, arguments, us = await packing(db_url, args.redis, args.turns, args.in_flight)
        print(f"the Redis commands of {args.turns} turns at {args.in_flight} in flight, one "
              f"process: {commands:.1f} commands and {arguments:.1f} arguments a turn,\npacked "
              "again each way, taking turns (median of 7 rounds), CPU a turn:")  # fmt: skip
        for name, value in us.items():
            print(f"{name:>9} {value:>7.1f} us")
        print(f"{'ratio':>9} {us['redis-py'] / us['hiredis']:>7.1f}x (redis-py / hiredis)")
        return

    rows = []
    async with scratch_database(args.pg) as db_url:
        for split in (False, True) if not args.telemetry_only else ():
            for in_flight in (1, args.in_flight):
                n = args.turns if in_flight > 1 else max(200, args.turns // 10)
                fw = await framework(
                    db_url, args.redis, n, in_flight, warmup=min(200, n), split=split
                )
                raw = await raw_hop(args.redis, n, in_flight)
                rows.append((split, in_flight, n, fw, raw))
        observed = []  # telemetry off, then on, then off and on again: the noise shows
        for split in (False, True):
            for telemetry in (False, True) * args.pairs:
                fw = await framework(db_url, args.redis, args.turns, args.in_flight,
                                     warmup=200, split=split, telemetry=telemetry)  # fmt: skip
                observed.append((split, telemetry, fw))

    print("frontdesk pipeline benchmark: fixed-reply engine, Redis + PostgreSQL on 127.0.0.1")
    if not rows:
        print("(--telemetry-only)")
    header = (
        f"{'processes':>19} {'in flight':>9} {'turns':>6} {'turns/s':>9} {'raw hop/s':>10} "
        f"{'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} {'raw p50':>8} {'CPU ms/turn':>12}"
    )
    print(header)
    for split, in_flight, n, (wall, cpu, lat), (raw_wall, _raw_cpu, raw_lat) in rows:
        rate, raw_rate = n / wall, n / raw_wall
        shape = "gateway | worker" if split else "gateway + worker"
        print(
            f"{shape:>19} {in_flight:>9} {n:>6} {rate:>9.0f} {raw_rate:>10.0f} "
            f"{rate / raw_rate:>6.2f} {pct(lat, 50) * 1000:>7.2f} {pct(lat, 99) * 1000:>7.2f} "
            f"{pct(raw_lat, 50) * 1000:>8.2f} {cpu / n * 1000:>12.2f}"
        )
    print(
        "p50/p99: a turn's latency from the message reaching the gateway to the last reply delta "
        "delivered,\nwith an instant engine: all of it is framework (at 1 in flight, nothing "
        'queues). "gateway + worker": one\nprocess; "gateway | worker": two processes, as in '
        "scaled mode. CPU: frontdesk's processes, not the\nRedis and PostgreSQL servers."
    )
    if not args.pairs:  # --pairs 0: the table above alone
        return
    print(f"\ntelemetry at {args.in_flight} in flight, {args.turns} turns a run, off and on "
          f"alternately ({args.pairs} runs each):")  # fmt: skip
    print(f"{'processes':>19} {'telemetry':>9} {'turns/s':>9} {'CPU ms/turn':>12} {'p99 ms':>7}")
    for split in (False, True):
        shape = "gateway | worker" if split else "gateway + worker"
        rates = {}
        for on in (False, True):
            runs = [fw for s, t, fw in observed if s == split and t == on]
            rate = sum(args.turns / wall for wall, _cpu, _lat in runs) / len(runs)
            cpu = sum(c / args.turns * 1000 for _w, c, _lat in runs) / len(runs)
            p99 = max(pct(lat, 99) * 1000 for _w, _c, lat in runs)
            rates[on] = rate
            print(f"{shape:>19} {'on' if on else 'off':>9} {rate:>9.0f} {cpu:>12.2f} {p99:>7.2f}")
        print(f"{shape:>19} {'on / off':>9} {rates[True] / rates[False]:>9.3f}")
    _telemetry(True)
    print(f"{'':>19} the metrics of one turn, counted in a loop: {counting_us():.1f} us of CPU")
    print(
        "on: /metrics served by each process and scraped every second (readiness checks "
        "included), JSON log\nlines at INFO to a file; off: no metric counted, nothing logged. "
        "Target: on >= 0.95 x off."
    )


if __name__ == "__main__":
    on_frontdesk_loop(main())
