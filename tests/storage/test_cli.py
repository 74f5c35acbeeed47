"""`frontdesk conversations list|show` and `frontdesk db upgrade`, as an operator runs them."""

from __future__ import annotations

import json
import uuid

import pytest
from typer.testing import CliRunner

from frontdesk.cli import app
from frontdesk.storage import ReplyFigures, Store
from frontdesk.wire import InboundMessage

runner = CliRunner()


@pytest.fixture
async def seeded(database_url: str) -> tuple[str, int, str]:
    """A conversation with a question, a reply with figures, and a failed reply."""
    chat = uuid.uuid4().hex
    store = Store(database_url)
    await store.start(migrate=True)
    try:
        msg = InboundMessage(
            "telegram", chat, "u-9", uuid.uuid4().hex, "Where is my [order]?", "Grace"
        )
        first = await store.record_user_message(msg)
        assert first is not None
        await store.record_reply(
            first.conversation_id,
            first.message_id,
            "It ships tomorrow.",
            ReplyFigures(tokens_in=30, tokens_out=5, ttft_ms=120.4, latency_ms=300.2, model="m"),
        )
        second = await store.record_user_message(
            InboundMessage("telegram", chat, "u-9", uuid.uuid4().hex, "Thanks", "Grace")
        )
        assert second is not None
        await store.record_reply(
            second.conversation_id, second.message_id, "", ReplyFigures(), error="engine down"
        )
    finally:
        await store.stop()
    return database_url, first.conversation_id, chat


def invoke(database_url: str, *args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(
        app, list(args), env={"FRONTDESK_DATABASE_URL": database_url, "COLUMNS": "200"}
    )


def test_list_json_and_table(seeded: tuple[str, int, str]) -> None:
    url, conv_id, chat = seeded
    result = invoke(url, "conversations", "list", "--limit", "500", "--json")
    assert result.exit_code == 0, result.output
    [row] = [c for c in json.loads(result.stdout) if c["id"] == conv_id]
    assert row["platform"] == "telegram" and row["external_key"] == chat
    assert row["user_name"] == "Grace" and row["message_count"] == 4
    assert row["last_message"] == ""  # the failed reply is the newest message

    table = invoke(url, "conversations", "list", "--limit", "1")
    assert table.exit_code == 0
    assert "telegram" in table.stdout and "Grace" in table.stdout and str(conv_id) in table.stdout


def test_show_json_and_table(seeded: tuple[str, int, str]) -> None:
    url, conv_id, _chat = seeded
    result = invoke(url, "conversations", "show", str(conv_id), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [(m["role"], m["status"]) for m in data["messages"]] == [
        ("user", "ok"),
        ("assistant", "ok"),
        ("user", "ok"),
        ("assistant", "error"),
    ]
    reply = data["messages"][1]
    assert (reply["tokens_in"], reply["tokens_out"], reply["ttft_ms"]) == (30, 5, 120.4)

    table = invoke(url, "conversations", "show", str(conv_id))
    assert table.exit_code == 0
    text = " ".join(table.stdout.split())
    assert "Where is my [order]?" in text  # user text is not taken for rich markup
    assert "30/5" in text and "120" in text and "engine down" in text


def test_unknown_id_is_one_line_and_exit_3(seeded: tuple[str, int, str]) -> None:
    url, _conv, _chat = seeded
    result = invoke(url, "conversations", "show", "99999999")
    assert result.exit_code == 3
    assert result.stderr.strip() == "error: no conversation with id 99999999"


def test_db_upgrade_creates_the_schema(tmp_path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'new.db'}"
    result = invoke(url, "db", "upgrade")
    assert result.exit_code == 0 and "revision" in result.stdout
    assert invoke(url, "conversations", "list", "--json").stdout.strip() == "[]"


def test_bad_setting_is_one_line() -> None:
    result = runner.invoke(app, ["conversations", "list"], env={"FRONTDESK_MAX_NEW_TOKENS": "lots"})
    assert result.exit_code == 2
    assert result.stderr.startswith("error: bad configuration: FRONTDESK_MAX_NEW_TOKENS")
