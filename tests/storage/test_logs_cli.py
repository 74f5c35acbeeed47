"""The operators' commands over seeded logs, on SQLite and on PostgreSQL: list filters, show
formats, search, export, delete, purge, stats and tail, in their --json and their text forms.

The PostgreSQL database is shared by the test session, so each test seeds its own platform names
and words, and filters by them."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from frontdesk.cli import app
from frontdesk.storage import ReplyFigures, Store
from frontdesk.wire import InboundMessage

runner = CliRunner()


@dataclass
class Seeded:
    url: str
    platform: str  # this test's own platform name
    other: str  # a second platform of this test's
    tag: str  # a word only this test's messages contain
    ann: int  # Ann's conversation on `platform`
    bob: int  # Bob's conversation, where Ann also wrote (a group chat)
    ann_other: int  # Ann's conversation on `other`
    old: int  # a conversation last active 120 days ago

    @property
    def ann_id(self) -> str:  # user ids and names are this test's own too
        return f"u-ann-{self.tag}"

    @property
    def bob_name(self) -> str:
        return f"Bob {self.tag}"


async def _say(
    store: Store, platform: str, chat: str, user: str, name: str, text_: str, reply: str | None
) -> tuple[int, int]:
    msg = InboundMessage(platform, chat, user, uuid.uuid4().hex, text_, name)
    recorded = await store.record_user_message(msg)
    assert recorded is not None
    if reply is not None:
        figures = ReplyFigures(tokens_in=40, tokens_out=12, ttft_ms=150.0, latency_ms=900.0)
        await store.record_reply(recorded.conversation_id, recorded.message_id, reply, figures)
    else:
        await store.record_reply(
            recorded.conversation_id, recorded.message_id, "", ReplyFigures(), error="engine down"
        )
    return recorded.conversation_id, recorded.message_id


@pytest.fixture
async def seeded(database_url: str) -> Seeded:
    tag = "zq" + uuid.uuid4().hex[:8]
    platform, other = f"tg{tag[2:8]}", f"sl{tag[2:8]}"
    ann_id, bob_id, bob_name = f"u-ann-{tag}", f"u-bob-{tag}", f"Bob {tag}"
    store = Store(database_url)
    await store.start(migrate=True)
    try:
        ann, _ = await _say(
            store, platform, "chat-ann", ann_id, "Ann",
            f"My refund for order {tag} has not arrived. Mail me at ann@example.com",
            "I'm sorry: the refund is on its way.",
        )  # fmt: skip
        bob, _ = await _say(
            store, platform, "chat-bob", bob_id, bob_name,
            f"How do I reset my password {tag}? Call me at +31 20 123 4567", None,
        )  # fmt: skip
        await _say(store, platform, "chat-bob", ann_id, "Ann", f"Me too {tag}", "Use the link.")
        ann_other, _ = await _say(
            store, other, "D-ann", ann_id, "Ann", f"Shipping question {tag}", "Two days."
        )
        old, _ = await _say(
            store, platform, "chat-old", "u-cy", "Cy", f"An old question {tag}", "An old answer."
        )
        async with store.engine.connect() as conn:
            then = datetime.now(UTC) - timedelta(days=120)
            await conn.execute(
                text(
                    "UPDATE conversations SET last_activity_at = :t, created_at = :t WHERE id = :i"
                ),
                {"t": then, "i": old},
            )
            await conn.execute(
                text("UPDATE messages SET created_at = :t WHERE conversation_id = :i"),
                {"t": then, "i": old},
            )
            await conn.commit()
        await store.reset_conversation(other, "D-ann")  # Ann's other conversation is closed
    finally:
        await store.stop()
    return Seeded(database_url, platform, other, tag, ann, bob, ann_other, old)


def invoke(url: str, *args: str, input: str | None = None, **env: str):  # type: ignore[no-untyped-def]
    return runner.invoke(
        app,
        list(args),
        input=input,
        env={"FRONTDESK_DATABASE_URL": url, "COLUMNS": "250", **env},
    )


def as_json(url: str, *args: str) -> object:
    result = invoke(url, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


async def user_rows(url: str, *needles: str) -> int:
    """Rows in any table that still name one of ``needles`` (ids or display names)."""
    store = Store(url)
    await store.start()
    try:
        async with store.engine.connect() as conn:
            total = 0
            for table in ("conversations", "messages"):
                for needle in needles:
                    total += (
                        await conn.execute(
                            text(
                                f"SELECT count(*) FROM {table} "
                                "WHERE user_id = :n OR lower(user_name) = lower(:n)"
                            ),
                            {"n": needle},
                        )
                    ).scalar_one()
            return total
    finally:
        await store.stop()


# -- list -------------------------------------------------------------------------------------------


def test_list_filters_and_columns(seeded: Seeded) -> None:
    url, p = seeded.url, seeded.platform
    rows = as_json(url, "conversations", "list", "--platform", p)
    # newest activity first: Ann wrote in Bob's conversation last
    assert [r["id"] for r in rows] == [seeded.bob, seeded.ann, seeded.old]
    assert [r["message_count"] for r in rows] == [4, 2, 2]
    top = as_json(url, "conversations", "list", "--platform", p, "--limit", "1")
    assert [r["id"] for r in top] == [seeded.bob]
    by_ann = as_json(url, "conversations", "list", "--user", seeded.ann_id, "--since", "1d")
    assert {r["id"] for r in by_ann} == {seeded.ann, seeded.ann_other}
    by_name = as_json(url, "conversations", "list", "--user", seeded.bob_name.upper())
    assert [r["id"] for r in by_name] == [seeded.bob]
    closed = as_json(url, "conversations", "list", "--platform", seeded.other, "--status", "closed")
    assert [r["id"] for r in closed] == [seeded.ann_other]
    old = as_json(url, "conversations", "list", "--platform", p, "--until", "90d")
    assert [r["id"] for r in old] == [seeded.old]
    assert as_json(url, "conversations", "list", "--platform", p, "--since", "2000-01-01") != []

    table = invoke(url, "conversations", "list", "--platform", p)
    assert table.exit_code == 0
    assert "Ann" in table.stdout and "Bob" in table.stdout and p in table.stdout
    assert "I'm sorry: the refund is on its way." in table.stdout  # the last message


def test_bad_time_is_one_line_with_exit_2(seeded: Seeded) -> None:
    result = invoke(seeded.url, "conversations", "list", "--since", "yesterday")
    assert result.exit_code == 2
    assert "--since 'yesterday'" in result.output and "Traceback" not in result.output


# -- show -------------------------------------------------------------------------------------------


def test_show_in_three_formats(seeded: Seeded) -> None:
    url = seeded.url
    data = as_json(url, "conversations", "show", str(seeded.ann))
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"]
    assert data["messages"][1]["latency_ms"] == 900.0
    markdown = invoke(url, "conversations", "show", str(seeded.ann), "--format", "markdown")
    assert markdown.exit_code == 0
    assert markdown.stdout.startswith(f"# Conversation {seeded.ann}")
    assert "**assistant**" in markdown.stdout and "40 → 12 tokens" in markdown.stdout
    assert "first token 150 ms" in markdown.stdout
    table = invoke(url, "conversations", "show", str(seeded.bob), "--format", "text")
    assert table.exit_code == 0
    assert "error: engine down" in table.stdout and "Bob" in table.stdout
    missing = invoke(url, "conversations", "show", "987654321")
    assert missing.exit_code == 3 and "no conversation with id 987654321" in missing.output


# -- search -----------------------------------------------------------------------------------------


def test_search_finds_the_right_messages_and_nothing_else(seeded: Seeded) -> None:
    url, tag = seeded.url, seeded.tag
    hits = as_json(url, "search", f"refunds {tag}")  # stemmed: "refunds" finds "refund"
    assert [h["conversation_id"] for h in hits] == [seeded.ann]
    assert f"**{tag}**" in hits[0]["snippet"] and "**refund**" in hits[0]["snippet"].lower()
    everywhere = as_json(url, "search", tag)
    assert {h["conversation_id"] for h in everywhere} == {
        seeded.ann, seeded.bob, seeded.ann_other, seeded.old,
    }  # fmt: skip
    only_other = as_json(url, "search", tag, "--platform", seeded.other)
    assert {h["conversation_id"] for h in only_other} == {seeded.ann_other}
    # --user picks conversations, as in list: Bob's, with Ann's message in it
    by_bob = as_json(url, "search", tag, "--user", seeded.bob_name)
    assert sorted(h["user_name"] for h in by_bob) == ["Ann", seeded.bob_name]
    assert {h["conversation_id"] for h in by_bob} == {seeded.bob}
    assert as_json(url, "search", tag, "--since", "30d", "--platform", seeded.platform)
    assert as_json(url, "search", f"{tag} nonexistentword") == []

    table = invoke(url, "search", f"password {tag}")
    assert table.exit_code == 0 and "Bob" in table.stdout and "password" in table.stdout


@pytest.mark.parametrize(
    "query",
    [
        "'; DROP TABLE messages; --",
        '" OR 1=1 --',
        "refund* NEAR(a b) AND OR NOT ^",
        "\\ % _ ( ) : { } [ ] ~ <-> & | !",
        "",
    ],
)
def test_a_query_of_metacharacters_is_harmless(seeded: Seeded, query: str) -> None:
    result = invoke(seeded.url, "search", f"{query}", "--platform", seeded.platform, "--json")
    assert result.exit_code == 0, result.output
    assert isinstance(json.loads(result.stdout), list)
    # the table is still there, whole
    assert len(as_json(seeded.url, "search", seeded.tag, "--platform", seeded.platform)) == 4


# -- export -----------------------------------------------------------------------------------------


def test_export_in_three_formats_with_and_without_redaction(seeded: Seeded, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url, p = seeded.url, seeded.platform
    jsonl = invoke(url, "export", "--platform", p)
    assert jsonl.exit_code == 0, jsonl.output
    rows = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert len(rows) == 8  # four user messages, four replies
    assert [r["message_id"] for r in rows] == sorted(r["message_id"] for r in rows)
    assert rows[0]["platform"] == p and rows[0]["user_name"] == "Ann"
    assert "ann@example.com" in rows[0]["content"]

    redacted = invoke(url, "export", "--platform", p, "--format", "csv", "--redact")
    assert redacted.exit_code == 0
    table = list(csv.DictReader(io.StringIO(redacted.stdout)))
    assert len(table) == 8
    joined = " ".join(r["content"] for r in table)
    assert "[email]" in joined and "[phone]" in joined
    assert "ann@example.com" not in joined and "123 4567" not in joined
    env_redacted = invoke(url, "export", "--platform", p, FRONTDESK_REDACT="1")
    assert "ann@example.com" not in env_redacted.stdout

    target = tmp_path / "out.json"
    to_file = invoke(url, "export", "--platform", p, "--format", "json", "--out", str(target))
    assert to_file.exit_code == 0, to_file.output
    assert "wrote 8 messages" in to_file.output
    assert [r["message_id"] for r in json.loads(target.read_text())] == [
        r["message_id"] for r in rows
    ]
    since = invoke(url, "export", "--platform", p, "--since", "30d", "--limit", "3")
    assert len(since.stdout.splitlines()) == 3
    unwritable = invoke(url, "export", "--out", str(tmp_path / "missing" / "x.jsonl"))
    assert unwritable.exit_code == 2 and "cannot write" in unwritable.output


# -- delete and purge -------------------------------------------------------------------------------


def test_delete_asks_first(seeded: Seeded) -> None:
    url = seeded.url
    declined = invoke(url, "conversations", "delete", str(seeded.bob), input="n\n")
    assert declined.exit_code == 4 and "nothing was deleted" in declined.output
    assert as_json(url, "conversations", "show", str(seeded.bob))["messages"]
    done = invoke(url, "conversations", "delete", str(seeded.bob), input="y\n")
    assert done.exit_code == 0 and "4 messages" in done.stdout
    assert invoke(url, "conversations", "show", str(seeded.bob)).exit_code == 3
    assert invoke(url, "conversations", "delete", str(seeded.bob), "--yes").exit_code == 3


async def test_purge_user_leaves_no_row_of_theirs(seeded: Seeded) -> None:
    url = seeded.url
    # a user id on one platform is enough: every platform's conversations of that id go
    result = await asyncio.to_thread(
        invoke, url, "purge", "--user", seeded.ann_id, "--yes", "--json"
    )
    assert result.exit_code == 0, result.output
    removed = json.loads(result.stdout)
    assert removed["conversations"] == 2
    assert removed["messages"] == 6  # two conversations of two, and one message + its reply
    assert removed["users"] == [seeded.ann_id]
    assert await user_rows(url, seeded.ann_id) == 0
    bob = await asyncio.to_thread(as_json, url, "conversations", "show", str(seeded.bob))
    assert [m["user_name"] for m in bob["messages"]] == [seeded.bob_name, None]  # Bob's turn
    assert bob["conversation"]["message_count"] == 2
    again = await asyncio.to_thread(invoke, url, "purge", "--user", seeded.ann_id, "--yes")
    assert again.exit_code == 3  # nobody by that name any more


def test_purge_by_display_name_asks_and_says_what_it_removed(seeded: Seeded) -> None:
    declined = invoke(seeded.url, "purge", "--user", seeded.bob_name, input="n\n")
    assert declined.exit_code == 4
    done = invoke(seeded.url, "purge", "--user", seeded.bob_name.lower(), input="y\n")
    assert done.exit_code == 0, done.output
    # Bob's conversation also holds Ann's turn: his turn and its reply go, the conversation and
    # Ann's turn stay
    assert "removed 0 conversations and 2 messages" in done.stdout
    assert f"u-bob-{seeded.tag}" in done.stdout
    kept = as_json(seeded.url, "conversations", "show", str(seeded.bob))
    assert [m["content"] for m in kept["messages"]] == [f"Me too {seeded.tag}", "Use the link."]


async def test_purging_bob_from_a_thread_he_shares_with_ann_leaves_her_turns_and_no_row_of_his(
    database_url: str,
) -> None:
    tag = "zq" + uuid.uuid4().hex[:8]
    platform = f"sl{tag[2:8]}"
    ann, ann_name, bob, bob_name = f"U-ann-{tag}", f"Ann {tag}", f"U-bob-{tag}", f"Bob {tag}"
    thread = "C0SUPPORT:1700000000.000100"
    store = Store(database_url)
    await store.start(migrate=True)
    try:
        shared, _ = await _say(store, platform, thread, bob, bob_name, "Bob asks", "To Bob")
        await _say(store, platform, thread, ann, ann_name, "Ann asks", "To Ann")
        await _say(store, platform, thread, bob, bob_name, "Bob again", "To Bob again")
        own, _ = await _say(store, platform, "D0BOB", bob, bob_name, "Bob alone", "Alone")
        ann_own, _ = await _say(store, platform, "D0ANN", ann, ann_name, "Ann alone", "Hers")
    finally:
        await store.stop()
    result = await asyncio.to_thread(
        invoke, database_url, "purge", "--user", bob, "--yes", "--json"
    )
    assert result.exit_code == 0, result.output
    removed = json.loads(result.stdout)
    assert (removed["conversations"], removed["messages"]) == (1, 6)  # his DM; 3 turns, 3 replies
    assert await user_rows(database_url, bob, bob_name) == 0  # no row names Bob
    left = await asyncio.to_thread(as_json, database_url, "conversations", "show", str(shared))
    assert [m["content"] for m in left["messages"]] == ["Ann asks", "To Ann"]
    assert left["conversation"]["user_id"] == ann  # the thread passed to Ann
    assert left["conversation"]["message_count"] == 2
    gone = await asyncio.to_thread(invoke, database_url, "conversations", "show", str(own))
    assert gone.exit_code == 3
    hers = await asyncio.to_thread(as_json, database_url, "conversations", "show", str(ann_own))
    assert len(hers["messages"]) == 2


async def test_a_display_name_of_several_users_is_refused_unless_all_matching(
    database_url: str,
) -> None:
    tag = "zq" + uuid.uuid4().hex[:8]
    name = f"Sam {tag}"
    store = Store(database_url)
    await store.start(migrate=True)
    try:
        await _say(store, f"tg{tag[2:8]}", "1", f"u1-{tag}", name, "First Sam", "Hi")
        await _say(store, f"sl{tag[2:8]}", "D1", f"u2-{tag}", name, "Second Sam", "Hi")
    finally:
        await store.stop()
    refused = await asyncio.to_thread(invoke, database_url, "purge", "--user", name, "--yes")
    assert refused.exit_code == 2
    assert f"u1-{tag}" in refused.output and f"u2-{tag}" in refused.output
    assert "--all-matching" in refused.output
    assert await user_rows(database_url, name) == 4  # nothing was deleted
    done = await asyncio.to_thread(
        invoke, database_url, "purge", "--user", name, "--all-matching", "--yes", "--json"
    )
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["conversations"] == 2
    assert await user_rows(database_url, name) == 0


def test_purge_older_than_is_retention(seeded: Seeded) -> None:
    url, p = seeded.url, seeded.platform
    result = invoke(url, "purge", "--older-than", "90d", "--platform", p, "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["conversations"] == 1
    ids = {r["id"] for r in as_json(url, "conversations", "list", "--platform", p, "--limit", "9")}
    assert ids == {seeded.ann, seeded.bob}
    both = invoke(url, "purge", "--older-than", "90d", "--user", "x")
    assert both.exit_code == 2 and "exactly one" in both.output


# -- stats and tail ---------------------------------------------------------------------------------


def test_stats_per_platform(seeded: Seeded) -> None:
    url, p = seeded.url, seeded.platform
    [row] = as_json(url, "stats", "--platform", p, "--since", "7d")
    assert row["platform"] == p
    assert row["turns"] == 3  # the old conversation is outside the window
    assert row["active_users"] == 2
    assert row["errors"] == 1 and abs(row["error_rate"] - 1 / 3) < 1e-9
    assert row["latency_p50_ms"] == 900.0 and row["ttft_p95_ms"] == 150.0
    assert row["tokens_in"] == 80 and row["tokens_out"] == 24
    assert sum(row["turns_per_day"].values()) == 3
    [wide] = as_json(url, "stats", "--platform", p, "--since", "365d")
    assert wide["turns"] == 4 and len(wide["turns_per_day"]) == 2
    table = invoke(url, "stats", "--platform", p)
    assert table.exit_code == 0 and "33.3%" in table.stdout and "turns per day" in table.stdout


async def test_tail_follows_new_messages(seeded: Seeded) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FRONTDESK_")},
        "FRONTDESK_DATABASE_URL": seeded.url,
    }
    command = [sys.executable, "-m", "frontdesk.cli", "tail", "--platform", seeded.platform]
    proc = subprocess.Popen(  # noqa: ASYNC220 (its pipes are read in a thread)
        [*command, "--json", "-n", "2", "--interval", "0.2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = [json.loads(proc.stdout.readline()) for _ in range(2)]  # type: ignore[union-attr]
        assert [m["role"] for m in first] == ["user", "assistant"]
        store = Store(seeded.url)
        await store.start()
        try:
            await _say(store, seeded.platform, "chat-new", "u-dee", "Dee", "Live one", "Live two")
        finally:
            await store.stop()
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)  # type: ignore[union-attr]
        assert json.loads(line)["content"] == "Live one"
    finally:
        proc.send_signal(signal.SIGINT)
        _out, errors = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert "Traceback" not in errors

    # the text form: one line a message, the user's name or "bot", the text on one line
    proc = subprocess.Popen(  # noqa: ASYNC220
        [*command, "-n", "2", "--redact"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        lines = [proc.stdout.readline() for _ in range(2)]  # type: ignore[union-attr]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    assert "Dee: Live one" in lines[0] and seeded.platform in lines[0]
    assert "bot: Live two" in lines[1]
