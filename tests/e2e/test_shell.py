"""`frontdesk shell` as a user runs it: a subprocess, lines in through a pipe, replies out."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path


def run_shell(
    tmp_path: Path, stdin: bytes | str, timeout: float = 120, *args: str, **env: str
) -> subprocess.CompletedProcess:
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FRONTDESK_")},
        "FRONTDESK_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'shell.db'}",
        "FRONTDESK_MAX_NEW_TOKENS": "24",
        "FRONTDESK_TEMPERATURE": "0",
        **env,
    }
    data = stdin.encode() if isinstance(stdin, str) else stdin
    return subprocess.run(
        [sys.executable, "-m", "frontdesk.cli", *(args or ("shell",))],
        input=data,
        capture_output=True,
        timeout=timeout,
        cwd=tmp_path,
        env=full_env,
    )


def stored(tmp_path: Path) -> list[tuple[int, str, str, str]]:
    with sqlite3.connect(tmp_path / "shell.db") as db:
        return db.execute(
            "SELECT conversation_id, role, status, content FROM messages ORDER BY id"
        ).fetchall()


def test_shell_chats_through_the_whole_pipeline(tmp_path: Path) -> None:
    result = run_shell(tmp_path, "Hello! Who are you?\nWhat is two plus two?\n")
    assert result.returncode == 0, result.stderr.decode()
    lines = [line for line in result.stdout.decode().splitlines() if line.strip()]
    assert len(lines) >= 2  # one streamed reply per message
    assert b"Traceback" not in result.stderr
    rows = stored(tmp_path)
    assert [(role, status) for _c, role, status, _t in rows] == [
        ("user", "ok"),
        ("assistant", "ok"),
        ("user", "ok"),
        ("assistant", "ok"),
    ]
    assert rows[1][3].strip() and rows[1][3].strip() in result.stdout.decode()


def test_shell_reset_and_quit(tmp_path: Path) -> None:
    result = run_shell(tmp_path, "Hi\n/reset\nHi again\n/quit\nnever read\n")
    assert result.returncode == 0, result.stderr.decode()
    assert "Started a new conversation" in result.stdout.decode()
    rows = stored(tmp_path)
    assert [content for _c, role, _s, content in rows if role == "user"] == ["Hi", "Hi again"]
    assert len({conv for conv, *_ in rows}) == 2  # /reset opened a second conversation


def test_shell_answers_bad_input_politely_and_keeps_serving(tmp_path: Path) -> None:
    lines = b"\n".join(
        [
            b"",  # empty
            b"x" * 100_000,  # 100 kB
            b"nul\x00byte and a bad byte \xff here",  # NUL and undecodable input
            b"Still there?",
        ]
    )
    result = run_shell(tmp_path, lines + b"\n")
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode()
    assert "Your message is empty" in out
    assert "Your message is too long for me (100,000 characters" in out
    assert b"Traceback" not in result.stderr
    users = [content for _c, role, _s, content in stored(tmp_path) if role == "user"]
    assert users == ["nulbyte and a bad byte \ufffd here", "Still there?"]
    assert len([r for r in stored(tmp_path) if r[1] == "assistant" and r[2] == "ok"]) == 2


def test_missing_model_is_one_clear_line(tmp_path: Path) -> None:
    result = run_shell(tmp_path, "hi\n", FRONTDESK_MODEL=str(tmp_path / "nope.gguf"))
    assert result.returncode == 2
    err = result.stderr.decode().strip()
    assert err == f"error: model file not found: {tmp_path / 'nope.gguf'}"


def test_unreachable_redis_at_start_is_one_clear_line(tmp_path: Path) -> None:
    upgraded = run_shell(tmp_path, "", 60, "db", "upgrade")
    assert upgraded.returncode == 0 and b"revision" in upgraded.stdout
    result = run_shell(tmp_path, "hi\n", FRONTDESK_REDIS_URL="redis://127.0.0.1:1/0")
    assert result.returncode == 1
    err = result.stderr.decode().strip()
    assert err.startswith("error: cannot reach Redis at redis://127.0.0.1:1/0")
    assert "\n" not in err


def test_unreachable_database_at_start_is_one_clear_line(tmp_path: Path) -> None:
    result = run_shell(
        tmp_path, "hi\n", FRONTDESK_DATABASE_URL="postgresql+asyncpg://postgres@127.0.0.1:1/x"
    )
    assert result.returncode == 1
    err = result.stderr.decode().strip()
    assert err.startswith("error: cannot reach the database at postgresql+asyncpg://")
    assert "\n" not in err
