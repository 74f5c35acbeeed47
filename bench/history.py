"""Conversation history at scale: is a turn's context still fast, and the logs still usable,
with a million messages stored?

Seeds a scratch PostgreSQL database (schema from frontdesk's own migrations) with 1,000,000
messages over 100,000 conversations by COPY: user and assistant messages alternate, 10 a
conversation, their times spread over 90 days and interleaved across conversations (ids follow
time, as they do in production), text drawn from a vocabulary of about 370 words with a seeded
generator (Zipf-like, so "order" is in most messages), and one rare word, "chargeback", planted
in exactly 40 messages. Replies carry tokens, time to first token and latency. The counter trigger is
off during the COPY (the rows carry their counts), the full-text GIN index is dropped before it
and built again after it, and VACUUM ANALYZE runs at the end, as autovacuum would have long
since done on a live table; each step is timed and printed as part of the seeding cost.

Then, through frontdesk's own code:

- context load: ``Store.turn_context`` (the worker's one query per turn, limit 200) for random
  conversations and their newest user message, one at a time; target p99 <= 5 ms;
- search: ``Logs.search`` for the rare word and for a common one, with and without a platform
  filter, 50 hits at most; p50 / p99, the hits returned and how many messages match (no target);
- export: ``write_export`` of every message to a JSONL file, plain and with redaction on;
  target >= 50,000 rows/s.

Usage: python bench/history.py [--messages 1000000] [--conversations 100000]
    [--postgres postgresql://postgres@127.0.0.1:5432/postgres] [--keep | --database URL]
``--keep`` leaves the database in place and prints its URL; ``--database URL`` measures such a
database again without seeding it. Needs PostgreSQL on 127.0.0.1 (a superuser: seeding sets
session_replication_role). Run from the repository root. The figures depend on the machine: the
header gives its load average, and the client CPU beside COPY and export tells how much of the
time was this process's own work.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import math
import os
import random
import sys
import tempfile
import time
from array import array
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import pct, scratch_database

from frontdesk.redact import redact, unchanged
from frontdesk.storage import Store
from frontdesk.storage.export import ExportFormat, write_export
from frontdesk.storage.logs import LogFilter, Logs

DAYS = 90
RARE_WORD = "chargeback"  # not in the vocabulary: only where it is planted
RARE_PLANTS = 40
COMMON_WORD = "order"  # the vocabulary's most frequent content word
CHUNK = 50_000  # messages generated, then copied, at a time
SYSTEM_TOKENS = 120
CONTEXT_LIMIT = 200

# Function words take ~45 % of the words of a message (PostgreSQL drops them from the tsvector);
# the content words follow a Zipf law in this order, so the first are in most messages and the
# last in a few thousand of a million.
FUNCTION_TEXT = """
i you we it is are was be been the a an and or but to of in on at for with from by as that this
my your our can could would will do does did not have has had if so there what when how please
just about into than then them they he she me us all any some no yes also very
"""
CONTENT_TEXT = """
order account help thanks payment refund delivery time update issue support question
price plan subscription card email password login app phone message team service invoice
problem day week today tomorrow check send address change cancel return product item
shipping package tracking number status customer new free trial upgrade downgrade billing
charge error work working available store online website page link code discount offer
size color stock month year open close hours weekend monday friday reply contact chat
agent manager request form details information data profile settings notification alert
reset verify confirm confirmation receipt amount total tax fee credit debit bank transfer
balance wallet voucher gift coupon promo delay late early arrive arrived courier warehouse
box damaged broken missing wrong replacement exchange warranty repair technician install
setup device laptop tablet screen battery charger cable adapter speaker headphones camera
printer router wifi network connection signal slow fast download upload file photo video
document pdf report export import sync backup restore storage memory version release bug
crash freeze restart reinstall browser chrome firefox safari android iphone windows mac
linux desktop mobile language english spanish french german translate translation
schedule appointment booking reservation table room hotel flight ticket seat gate luggage
baggage passport visa insurance claim policy coverage premium deductible doctor clinic
prescription pharmacy medicine dose allergy symptom fever headache pain test result lab
school course lesson teacher student exam grade homework assignment deadline project
meeting calendar reminder invite guest event venue parking map direction route traffic
weather rain snow sunny forecast temperature heating cooling water electricity gas meter
reading bill usage tariff contract renewal termination notice deposit rent lease landlord
tenant maintenance plumber leak kitchen bathroom garden garage door window key lock alarm
recipe ingredient vegetarian vegan gluten dairy menu dessert coffee tea breakfast lunch
dinner pizza burger salad soup sandwich takeaway pickup driver restaurant
"""
NAMES_TEXT = """
Ana Ben Chloe David Elena Farid Grace Hugo Ines Jonas Kemal Lena Marco Nadia Omar Priya Quinn
Rosa Sven Tara Umar Vera Wei Ximena Yusuf Zoe
"""
FUNCTION_WORDS = FUNCTION_TEXT.split()
CONTENT_WORDS = CONTENT_TEXT.split()
FIRST_NAMES = NAMES_TEXT.split()
MODELS = ("qwen2.5-7b-instruct-q4_k_m", "SmolLM2-135M-Instruct-Q8_0")
ENGINE_ERROR = "the engine did not answer within 120 s"


def sentence_pool(rng: random.Random, count: int) -> tuple[list[str], array]:
    """``count`` sentences of 5-14 words drawn from the vocabulary, a quarter of them questions,
    and the running total of their words (``total[k]``: words in sentences before k). Messages
    are runs of consecutive sentences from a random place: as varied as drawing every word
    afresh, at a fraction of the cost."""
    zipf = [1 / (rank + 2.7) for rank in range(len(CONTENT_WORDS))]
    content_share, function_share = 0.55, 0.45
    weights = [function_share / len(FUNCTION_WORDS)] * len(FUNCTION_WORDS)
    weights += [content_share * w / sum(zipf) for w in zipf]
    vocab, cum = FUNCTION_WORDS + CONTENT_WORDS, list(itertools.accumulate(weights))
    sentences = []
    total = array("I", [0])
    for _ in range(count):
        words = rng.choices(vocab, cum_weights=cum, k=rng.randint(5, 14))
        end = "?" if rng.random() < 0.25 else "."
        sentences.append(" ".join([words[0].capitalize(), *words[1:]]) + end)
        total.append(total[-1] + len(words))
    return sentences, total


@dataclass
class Plan:
    """Who says what when, decided before any text is written: per conversation its platform,
    chat and user; per message (slot ``conversation * per + n``) its time and its text (a run
    of sentences from the pool)."""

    conversations: int
    messages: int
    per: int  # slots per conversation: the most messages any has
    counts: array  # messages of each conversation
    times: array  # per slot, seconds since the epoch
    first: array  # per slot, its first sentence in the pool
    length: array  # per slot, how many sentences
    words: array  # per slot, how many words they have
    ttft: array  # per slot, an assistant reply's time to first token, ms
    order: list[int]  # slots in time order: message id = position + 1
    convs: list[tuple[Any, ...]]  # conversation rows, id = index + 1
    planted: set[int]  # slots of user messages that get RARE_WORD
    pool: list[str]  # the sentences


def plan(conversations: int, messages: int, rng: random.Random) -> Plan:
    pool, total = sentence_pool(rng, 100_000)
    base, extra = divmod(messages, conversations)
    per = base + (extra > 0)
    counts = array("I", (base + (c < extra) for c in range(conversations)))
    times = array("d", bytes(8 * conversations * per))
    first = array("I", bytes(4 * conversations * per))
    length = array("H", bytes(2 * conversations * per))
    words = array("H", bytes(2 * conversations * per))
    ttft = array("f", bytes(4 * conversations * per))
    now = time.time()
    convs: list[tuple[Any, ...]] = []
    latest: dict[tuple[str, str], int] = {}  # a chat's newest conversation is its active one
    users = max(1, conversations * 2 // 3)  # a third of the users come back for a second one
    for c in range(conversations):
        user = rng.randrange(users)
        name = f"{FIRST_NAMES[user % len(FIRST_NAMES)]} {chr(65 + user // 7 % 26)}."
        draw = rng.random()
        if draw < 0.55:
            platform, user_id = "telegram", str(5_000_000_000 + user * 7919)
            chat = user_id  # a private chat: a /reset opens a new conversation in the same chat
        elif draw < 0.95:
            platform, user_id = "slack", f"U{user * 7919:09X}"
            chat = f"C{rng.randrange(60):08X}:{rng.randrange(10**9)}.{rng.randrange(10**6):06d}"
        else:
            platform, user_id, chat = "console", f"console-{user}", f"console-{user}"
        start = now - DAYS * 86_400 * rng.random()
        t = start
        for slot in range(c * per, c * per + counts[c]):
            user_turn = (slot - c * per) % 2 == 0
            want = 4 + rng.expovariate(1 / 14) if user_turn else 12 + rng.expovariate(1 / 45)
            k = rng.randrange(len(pool) - 80)
            end = min(k + 60, bisect.bisect_left(total, total[k] + min(want, 400)))
            first[slot], length[slot] = k, end - k
            words[slot] = total[end] - total[k]
            if user_turn:  # the user writes, after reading the last reply
                t += 0 if slot == c * per else 4 + rng.expovariate(1 / 60)
            else:  # the reply, streamed at 15-40 ms a token after its first one
                ttft[slot] = rng.lognormvariate(math.log(250), 0.5)
                t += (ttft[slot] + tokens(words[slot]) * rng.uniform(15, 40)) / 1000
            times[slot] = t
        key = (platform, chat)
        if key in latest and convs[latest[key]][7] > start:
            status = "closed"
        else:
            if key in latest:
                row = convs[latest[key]]
                convs[latest[key]] = (*row[:5], "closed", *row[6:])
            latest[key] = c
            status = "active"
        convs.append((c + 1, platform, chat, user_id, name, status, counts[c], start, t))
    slots = [c * per + n for c in range(conversations) for n in range(counts[c])]
    slots.sort(key=times.__getitem__)
    user_slots = rng.sample(range(conversations), min(RARE_PLANTS, conversations))
    planted = {c * per + 2 * rng.randrange((counts[c] + 1) // 2) for c in user_slots}
    return Plan(
        conversations=conversations,
        messages=messages,
        per=per,
        counts=counts,
        times=times,
        first=first,
        length=length,
        words=words,
        ttft=ttft,
        order=slots,
        convs=convs,
        planted=planted,
        pool=pool,
    )


def tokens(words: int) -> int:
    return math.ceil(words * 1.35)


def extras(rng: random.Random, name: str) -> str:
    """What people also type: order numbers, e-mail addresses, phone numbers, a card number."""
    draw = rng.random()
    if draw < 0.06:
        return f" My order number is {rng.randrange(10**5, 10**6)}."
    if draw < 0.08:
        return f" You can reach me at {name.split()[0].lower()}.{rng.randrange(100)}@example.com."
    if draw < 0.09:
        return f" Call me on +44 7700 {rng.randrange(900_000, 1_000_000)}."
    if draw < 0.092:
        return " The card was 4111 1111 1111 1111."
    return ""


def message_rows(p: Plan, rng: random.Random) -> Iterator[list[tuple[Any, ...]]]:
    """The messages table in id order, CHUNK rows at a time, as COPY takes them."""
    ids = array("Q", bytes(8 * p.conversations * p.per))  # slot -> message id
    history = array("I", bytes(4 * p.conversations))  # tokens so far, per conversation
    chunk: list[tuple[Any, ...]] = []
    for position, slot in enumerate(p.order):
        message_id = position + 1
        ids[slot] = message_id
        c, n = divmod(slot, p.per)
        conv = p.convs[c]
        at = datetime.fromtimestamp(p.times[slot], UTC)
        content = " ".join(p.pool[p.first[slot] : p.first[slot] + p.length[slot]])
        if n % 2 == 0:
            content += extras(rng, conv[4])
            if slot in p.planted:
                cut = content.find(" ", len(content) // 2)
                content = f"{content[:cut]} {RARE_WORD}{content[cut:]}" if cut > 0 else content
            history[c] += tokens(p.words[slot])
            if conv[1] == "slack":  # a ts: unique in its channel, as ids follow time
                platform_id = f"{int(p.times[slot])}.{message_id % 1_000_000:06d}"
            else:
                platform_id = str(message_id)
            chunk.append(
                (
                    message_id,
                    c + 1,
                    "user",
                    content,
                    conv[1],
                    platform_id,
                    f"{conv[1]}:{conv[2].split(':')[0]}:{platform_id}",
                    conv[3],
                    conv[4],
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    "ok",
                    None,
                    at,
                )
            )
        else:
            failed = rng.random() < 0.005
            out = 0 if failed else tokens(p.words[slot])
            ttft = float(p.ttft[slot])
            latency = (p.times[slot] - p.times[slot - 1]) * 1000
            chunk.append(
                (
                    message_id,
                    c + 1,
                    "assistant",
                    "" if failed else content,
                    None,
                    None,
                    None,
                    None,
                    None,
                    ids[slot - 1],
                    SYSTEM_TOKENS + history[c],
                    out,
                    None if failed else round(ttft, 1),
                    round(latency, 1),
                    MODELS[1 if c % 5 == 0 else 0],
                    "error" if failed else "ok",
                    ENGINE_ERROR if failed else None,
                    at,
                )
            )
            history[c] += out
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


MESSAGE_COLUMNS = [
    "id",
    "conversation_id",
    "role",
    "content",
    "platform",
    "platform_message_id",
    "dedupe_key",
    "user_id",
    "user_name",
    "reply_to_id",
    "tokens_in",
    "tokens_out",
    "ttft_ms",
    "latency_ms",
    "model",
    "status",
    "error",
    "created_at",
]  # not content_tsv: PostgreSQL generates it
CONVERSATION_COLUMNS = [
    "id",
    "platform",
    "external_key",
    "user_id",
    "user_name",
    "status",
    "message_count",
    "created_at",
    "last_activity_at",
]


class Clock:
    """Wall and CPU seconds (this process's) per step, added up over a step's parts."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] = self.wall.get(name, 0) + time.perf_counter() - wall
            self.cpu[name] = self.cpu.get(name, 0) + time.process_time() - cpu


async def seed(dsn: str, conversations: int, messages: int, seed_value: int) -> Clock:
    """Fill the (migrated, empty) database, timing each step."""
    rng = random.Random(seed_value)
    clock = Clock()
    with clock.step("generate"):
        p = plan(conversations, messages, rng)
        convs = [
            (*row[:7], datetime.fromtimestamp(row[7], UTC), datetime.fromtimestamp(row[8], UTC))
            for row in p.convs
        ]
    conn = await asyncpg.connect(dsn)
    try:
        # replica: the counter trigger and the foreign-key checks do not fire (the rows come with
        # their counts, and their references are right by construction)
        await conn.execute("SET session_replication_role = replica")
        gin = await conn.fetchval("SELECT pg_get_indexdef('ix_messages_content_tsv'::regclass)")
        await conn.execute("DROP INDEX ix_messages_content_tsv")
        with clock.step("copy"):
            await conn.copy_records_to_table(
                "conversations", records=convs, columns=CONVERSATION_COLUMNS
            )
        rows = message_rows(p, rng)
        while True:
            with clock.step("generate"):
                chunk = next(rows, None)
            if chunk is None:
                break
            with clock.step("copy"):
                await conn.copy_records_to_table("messages", records=chunk, columns=MESSAGE_COLUMNS)
        with clock.step("gin"):
            await conn.execute(gin)
        for table in ("conversations", "messages"):
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT max(id) FROM {table}))"
            )
        with clock.step("vacuum"):
            await conn.execute("VACUUM (ANALYZE) conversations, messages")
    finally:
        await conn.close()
    return clock


async def timed(call: Callable[[], Awaitable[Any]], times: int) -> tuple[list[float], Any]:
    """Seconds each of ``times`` sequential calls took, and the last call's result."""
    result = None
    took = []
    for _ in range(times):
        started = time.perf_counter()
        result = await call()
        took.append(time.perf_counter() - started)
    return took, result


async def context_load(store: Store, dsn: str, turns: int, rng: random.Random) -> list[float]:
    """turn_context for random conversations at their newest user message, one at a time."""
    conn = await asyncpg.connect(dsn)
    try:
        ids = [r[0] for r in await conn.fetch("SELECT id FROM conversations")]
        picked = [rng.choice(ids) for _ in range(turns + 100)]
        newest = dict(
            await conn.fetch(
                "SELECT conversation_id, max(id) FROM messages "
                "WHERE role = 'user' AND conversation_id = ANY($1) GROUP BY conversation_id",
                picked,
            )
        )
    finally:
        await conn.close()
    pairs = [(c, newest[c]) for c in picked]
    for c, m in pairs[:100]:  # warm-up: the pool's connections prepare the statement
        await store.turn_context(c, m, limit=CONTEXT_LIMIT)
    took = []
    for c, m in pairs[100:]:
        started = time.perf_counter()
        context = await store.turn_context(c, m, limit=CONTEXT_LIMIT)
        took.append(time.perf_counter() - started)
        assert context.ids and context.ids[-1] == m
    return took


async def matching(dsn: str, word: str, platform: str | None) -> int:
    """How many messages the search would find without its limit."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM messages m JOIN conversations c ON c.id = m.conversation_id "
            "WHERE m.content_tsv @@ websearch_to_tsquery('english', $1) "
            "AND ($2::text IS NULL OR c.platform = $2)",
            word,
            platform,
        )
    finally:
        await conn.close()


async def export(
    logs: Logs, shown: Callable[[str], str], where: Path
) -> tuple[int, float, float, int]:
    """Every message to a JSONL file: rows, wall seconds, CPU seconds (this process), bytes."""
    path = where / "export.jsonl"
    with path.open("w", encoding="utf-8", newline="") as stream:
        wall, cpu = time.perf_counter(), time.process_time()
        rows = await write_export(
            logs, LogFilter(limit=None), ExportFormat.jsonl, shown, stream, None
        )
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    size = path.stat().st_size
    path.unlink()
    return rows, wall, cpu, size


def row(what: str, result: str, target: str = "", met: bool | None = None) -> None:
    verdict = "" if met is None else ("yes" if met else "**no**")
    print(f"| {what} | {result} | {target or '-'} | {verdict or '-'} |")


async def measure(url: str, args: argparse.Namespace, seeded: Clock | None) -> None:
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    rng = random.Random(args.seed + 1)
    store = Store(url, pool_size=2)
    await store.start(migrate=True)
    try:
        logs = Logs(store)
        conn = await asyncpg.connect(dsn)
        try:
            conversations = await conn.fetchval("SELECT count(*) FROM conversations")
            messages = await conn.fetchval("SELECT count(*) FROM messages")
            size = await conn.fetchval(
                "SELECT pg_size_pretty(pg_database_size(current_database()))"
            )
        finally:
            await conn.close()
        context = await context_load(store, dsn, args.turns, rng)
        searches = []
        for label, word in (("rare", RARE_WORD), ("common", COMMON_WORD)):
            for platform in (None, "slack"):
                filt = LogFilter(platform=platform, limit=50)
                await logs.search(word, filt)  # warm-up
                took, hits = await timed(lambda w=word, f=filt: logs.search(w, f), args.repeat)
                total = await matching(dsn, word, platform)
                searches.append((label, word, platform, took, len(hits), total))
        with tempfile.TemporaryDirectory(prefix="frontdesk-bench-") as where:
            plain = await export(logs, unchanged, Path(where))  # what the CLI passes
            redacted = await export(logs, redact, Path(where))
    finally:
        await store.stop()

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"\nfrontdesk history at scale: {messages:,} messages in {conversations:,} conversations "
        f"(database {size}), PostgreSQL on 127.0.0.1; load average {load}\n"
    )
    print("| measure | result | target | met |")
    print("|---|---|---|---|")
    if seeded is not None:
        wall, cpu = seeded.wall, seeded.cpu
        total = sum(wall.values())
        row("seed: plan and generate the rows (Python)", f"{wall['generate']:.1f} s")
        row(
            "seed: COPY conversations + messages (tsvector generated, GIN index dropped)",
            f"{wall['copy']:.1f} s, {messages / wall['copy']:,.0f} messages/s "
            f"(client CPU {cpu['copy']:.1f} s)",
        )
        row("seed: CREATE the GIN index on content_tsv again", f"{wall['gin']:.1f} s")
        row("seed: VACUUM ANALYZE", f"{wall['vacuum']:.1f} s")
        row("seed: total", f"{total:.1f} s, {messages / total:,.0f} messages/s")
    p50, p99 = pct(context, 50) * 1000, pct(context, 99) * 1000
    row(
        f"context load: turn_context(limit={CONTEXT_LIMIT}) of {len(context):,} random "
        "conversations, one at a time, p50 / p99 (max)",
        f"{p50:.2f} / {p99:.2f} ms ({max(context) * 1000:.1f})",
        "p99 <= 5 ms",
        p99 <= 5,
    )
    for label, word, platform, took, hits, total in searches:
        where = f", platform={platform}" if platform else ""
        row(
            f'search, {label} word "{word}"{where}, limit 50, {len(took)} times, p50 / p99',
            f"{pct(took, 50) * 1000:.1f} / {pct(took, 99) * 1000:.1f} ms; "
            f"{hits} hits shown of {total:,} matching",
        )
    for label, (rows, took, cpu_s, size_bytes) in (("plain", plain), ("redacted", redacted)):
        rate = rows / took
        row(
            f"export to JSONL, {label}",
            f"{rows:,} rows in {took:.1f} s, {rate:,.0f} rows/s "
            f"(client CPU {cpu_s:.1f} s; {size_bytes / 1e6:,.0f} MB)",
            ">= 50,000 rows/s",
            rate >= 50_000,
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--conversations", type=int, default=100_000)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--keep", action="store_true", help="keep the database; print its URL")
    parser.add_argument("--database", help="measure this database (kept earlier); do not seed")
    parser.add_argument("--turns", type=int, default=2_000, help="context loads to time")
    parser.add_argument("--repeat", type=int, default=20, help="times to run each search")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.database:
        await measure(args.database, args, None)
        return
    if not 0 < args.conversations <= args.messages:
        parser.error("need 0 < --conversations <= --messages")
    async with scratch_database(args.postgres, args.keep) as url:
        store = Store(url, pool_size=1)
        await store.start(migrate=True)
        await store.stop()
        dsn = url.replace("postgresql+asyncpg://", "postgresql://")
        seeded = await seed(dsn, args.conversations, args.messages, args.seed)
        await measure(url, args, seeded)


if __name__ == "__main__":
    asyncio.run(main())
