"""`frontdesk doctor`: what it finds when every part is there, and when parts are missing."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from frontdesk.cli import app

runner = CliRunner()


def doctor(tmp_path, **env: str):  # type: ignore[no-untyped-def]
    url = f"sqlite+aiosqlite:///{tmp_path / 'doctor.db'}"
    base = {"FRONTDESK_DATABASE_URL": url, "FRONTDESK_ENGINE": "fixed", "COLUMNS": "200"}
    assert runner.invoke(app, ["db", "upgrade"], env=base).exit_code == 0
    return runner.invoke(app, ["doctor", "--json"], env={**base, **env})


def test_everything_there(tmp_path, redis_url: str, queue_prefix: str) -> None:  # type: ignore[no-untyped-def]
    result = doctor(tmp_path, FRONTDESK_REDIS_URL=redis_url, FRONTDESK_QUEUE_PREFIX=queue_prefix)
    assert result.exit_code == 0, result.output
    checks = {c["part"]: c for c in json.loads(result.stdout)}
    assert all(c["ok"] for c in checks.values())
    assert "model fixed-reply" in checks["engine"]["detail"]
    assert "Redis reachable" in checks["queue"]["detail"]
    assert "schema current" in checks["database"]["detail"]


def test_missing_parts_fail_with_a_reason_each(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = doctor(
        tmp_path,
        FRONTDESK_REDIS_URL="redis://127.0.0.1:1/0",
        FRONTDESK_ENGINE="openai",
        FRONTDESK_OPENAI_BASE_URLS="http://127.0.0.1:1",
    )
    assert result.exit_code == 1
    checks = {c["part"]: c for c in json.loads(result.stdout)}
    assert (
        not checks["engine"]["ok"] and "no OpenAI-compatible server" in checks["engine"]["detail"]
    )
    assert not checks["queue"]["ok"] and "127.0.0.1:1" in checks["queue"]["detail"]
    assert checks["database"]["ok"]
    assert "Traceback" not in result.output


def test_a_newcomers_first_doctor_in_a_fresh_folder_passes_and_creates_nothing(
    tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)  # the embedded default: sqlite+aiosqlite:///frontdesk.db here
    result = runner.invoke(
        app, ["doctor", "--json"], env={"FRONTDESK_ENGINE": "fixed", "COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    database = {c["part"]: c for c in json.loads(result.stdout)}["database"]
    assert database["ok"]
    assert "does not exist yet" in database["detail"] and "first run" in database["detail"]
    assert list(tmp_path.iterdir()) == []  # looked, created nothing


def test_doctor_on_an_embedded_database_behind_its_schema_says_the_first_run_upgrades_it(
    tmp_path,
) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    sqlite3.connect(tmp_path / "old.db").close()  # there, but never migrated
    env = {"FRONTDESK_DATABASE_URL": url, "FRONTDESK_ENGINE": "fixed", "COLUMNS": "200"}
    result = runner.invoke(app, ["doctor", "--json"], env=env)
    assert result.exit_code == 0, result.output
    database = {c["part"]: c for c in json.loads(result.stdout)}["database"]
    assert database["ok"] and "no schema yet" in database["detail"]
    # Scaled mode still insists on `frontdesk db upgrade`
    scaled = runner.invoke(
        app, ["doctor", "--json"], env={**env, "FRONTDESK_REDIS_URL": "redis://127.0.0.1:1/0"}
    )
    database = {c["part"]: c for c in json.loads(scaled.stdout)}["database"]
    assert not database["ok"] and "frontdesk db upgrade" in database["detail"]


async def test_a_desk_the_bot_cannot_use_fails_with_the_reason(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from tests.fakes.slack_api import FakeSlack
    from tests.fakes.telegram_api import FakeTelegram

    async with FakeSlack() as slack, FakeTelegram() as telegram:
        telegram.forum(-1009000)
        slack.missing_channels.add("C0GONE")
        slack.channels_without_bot.add("C0OUTSIDE")
        platforms = {
            "FRONTDESK_SLACK_BOT_TOKEN": slack.bot_token,
            "FRONTDESK_SLACK_SIGNING_SECRET": slack.signing_secret,
            "FRONTDESK_SLACK_API_URL": slack.base_url,
            "FRONTDESK_TELEGRAM_TOKEN": telegram.token,
            "FRONTDESK_TELEGRAM_API_URL": telegram.base_url,
        }

        async def desk_check(desk: str) -> dict:  # type: ignore[type-arg]
            result = await asyncio.to_thread(doctor, tmp_path, FRONTDESK_DESK=desk, **platforms)
            checks = {c["part"]: c for c in json.loads(result.stdout)}
            assert (result.exit_code == 0) == checks["desk"]["ok"], result.output
            return checks["desk"]

        assert (await desk_check("slack:C0DESK"))["ok"]
        gone = await desk_check("slack:C0GONE")
        assert not gone["ok"] and "channel_not_found" in gone["detail"]
        outside = await desk_check("slack:C0OUTSIDE")
        assert not outside["ok"] and "invite it" in outside["detail"]
        assert (await desk_check("telegram:-1009000"))["ok"]
        plain = await desk_check("telegram:-1001111")
        assert not plain["ok"] and "no topics" in plain["detail"]
        for check in (gone, outside, plain):
            assert slack.bot_token not in check["detail"] and telegram.token not in check["detail"]

        # several places: each is checked, and one the bot cannot use fails the doctor
        result = await asyncio.to_thread(
            doctor, tmp_path, FRONTDESK_DESK="slack:C0DESK, slack:C0OUTSIDE", **platforms
        )
        desks = [c for c in json.loads(result.stdout) if c["part"] == "desk"]
        assert [c["ok"] for c in desks] == [True, False] and result.exit_code == 1
        assert "slack:C0OUTSIDE" in desks[1]["detail"] and "invite it" in desks[1]["detail"]
        typo = await asyncio.to_thread(doctor, tmp_path, FRONTDESK_DESK="slack:C0DESK;C0OTHER")
        assert typo.exit_code == 2 and "FRONTDESK_DESK" in typo.output
        assert len(typo.output.strip().splitlines()) == 1  # one line, no traceback
