"""No configured secret reaches anything frontdesk prints: a gateway (Telegram and Slack) and a
worker at DEBUG through a turn on each platform, with a password-protected Redis and a database
URL with a password; a wrong Telegram token; a malformed database URL. Everything the processes
print is captured and searched for every secret, as written and as a URL carries it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest

from tests.fakes.slack_api import FakeSlack
from tests.fakes.telegram_api import FakeTelegram
from tests.support import free_port

ALICE = 1001
CLI = [sys.executable, "-m", "frontdesk.cli"]
TG_TOKEN = "424242:AAH-tg-secret-token-Zq9"
SLACK_BOT = "xoxb-slack-bot-secret-Zq9"
SLACK_SIGNING = "slack-signing-secret-Zq9"
SLACK_APP = "xapp-slack-app-secret-Zq9"
OPENAI_KEY = "sk-openai-secret-Zq9"
PG_PASSWORD = "pg-s3cret-Zq9"
REDIS_PASSWORD = "redis-s3cret-Zq9"
SECRETS = (TG_TOKEN, SLACK_BOT, SLACK_SIGNING, SLACK_APP, OPENAI_KEY, PG_PASSWORD, REDIS_PASSWORD)


async def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A command in a thread: the stand-ins keep serving on this loop meanwhile."""
    return await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=120
    )


def leaked(text: str) -> list[str]:
    forms = {form for s in SECRETS for form in (s, quote(s, safe=""), s.split(":")[-1])}
    return sorted(form for form in forms if form in text)


@pytest.fixture
def redis_with_password() -> Iterator[str]:
    """A Redis of this test's own that refuses clients without the password."""
    server = shutil.which("redis-server")
    assert server, "redis-server is not installed: run .ci/run"
    port = free_port()
    options = ["--bind", "127.0.0.1", "--requirepass", REDIS_PASSWORD, "--save", ""]
    proc = subprocess.Popen(
        [server, "--port", str(port), *options, "--appendonly", "no"], stdout=subprocess.DEVNULL
    )
    try:
        for _ in range(100):
            ping = subprocess.run(
                ["redis-cli", "-p", str(port), "-a", REDIS_PASSWORD, "--no-auth-warning", "ping"],
                capture_output=True,
                text=True,
            )
            if ping.stdout.strip() == "PONG":
                break
            subprocess.run(["sleep", "0.05"])
        yield f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_no_secret_is_printed_by_a_gateway_and_worker_at_debug_nor_by_a_bad_setup(
    redis_with_password: str, pg_fresh: str, tmp_path: Path
) -> None:
    database = pg_fresh.replace("postgres@", f"postgres:{PG_PASSWORD}@")
    port = free_port()
    async with (
        FakeTelegram(token=TG_TOKEN) as telegram,
        FakeSlack(bot_token=SLACK_BOT, signing_secret=SLACK_SIGNING, app_token=SLACK_APP) as slack,
    ):
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FRONTDESK_")},
            "FRONTDESK_TELEGRAM_TOKEN": TG_TOKEN,
            "FRONTDESK_TELEGRAM_API_URL": telegram.base_url,
            "FRONTDESK_SLACK_BOT_TOKEN": SLACK_BOT,
            "FRONTDESK_SLACK_SIGNING_SECRET": SLACK_SIGNING,
            "FRONTDESK_SLACK_API_URL": slack.base_url,
            "FRONTDESK_OPENAI_API_KEY": OPENAI_KEY,
            "FRONTDESK_HTTP_PORT": str(port),
            "FRONTDESK_REDIS_URL": redis_with_password,
            "FRONTDESK_DATABASE_URL": database,
            "FRONTDESK_ENGINE": "fixed",
            "FRONTDESK_FIXED_REPLY": "Answered.",
            "FRONTDESK_LOG_LEVEL": "DEBUG",
        }
        upgrade = await run([*CLI, "db", "upgrade"], env)
        assert upgrade.returncode == 0, upgrade.stderr
        outputs = [tmp_path / f"{role}.out" for role in ("gateway", "worker")]
        procs = [
            await asyncio.create_subprocess_exec(
                *CLI, role, env=env, stdout=out.open("wb"), stderr=subprocess.STDOUT
            )
            for role, out in zip(("gateway", "worker"), outputs, strict=True)
        ]
        try:
            telegram.private_message("my card is 4111 1111 1111 1111, help")
            await telegram.wait_for(lambda t: bool(t.messages_in(ALICE)), timeout=60)
            url = f"http://127.0.0.1:{port}/slack/events"
            for _ in range(100):  # until the gateway listens
                with contextlib.suppress(aiohttp.ClientError):
                    if (await slack.post_event(url, slack.dm("my slack question")))[0] == 200:
                        break
                await asyncio.sleep(0.2)
            await slack.wait_for(lambda s: bool(s.messages_in("D0ALICE")), timeout=60)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            codes = [await asyncio.wait_for(proc.wait(), 30) for proc in procs]
        assert telegram.messages_in(ALICE)[0]["text"] == "Answered."
        assert slack.messages_in("D0ALICE")[0]["text"] == "Answered."
        printed = "\n".join(out.read_text() for out in outputs)
        assert codes == [0, 0], printed[-3000:]
        # JSON lines (stderr is not a terminal): the URLs were logged at DEBUG, masked
        assert '"level": "DEBUG"' in printed and "getUpdates" in printed
        assert leaked(printed) == []
        for line in printed.splitlines():  # what users wrote is logged at DEBUG only
            with contextlib.suppress(ValueError):
                if json.loads(line)["level"] == "DEBUG":
                    continue
            assert "4111" not in line and "slack question" not in line, line

        # A wrong token, and a database URL that does not parse: one line each, no secret
        wrong = {**env, "FRONTDESK_TELEGRAM_TOKEN": "111:WRONG-tg-secret-Zq9"}
        wrong.pop("FRONTDESK_SLACK_BOT_TOKEN")
        refused = await run([*CLI, "gateway"], wrong)
        assert refused.returncode == 2, refused.stderr
        assert "refused FRONTDESK_TELEGRAM_TOKEN" in refused.stderr
        assert "WRONG-tg-secret" not in refused.stderr + refused.stdout
        malformed = {**env, "FRONTDESK_DATABASE_URL": database.replace("://", "//")}
        for command in (["worker"], ["conversations", "list"]):
            bad = await run([*CLI, *command], malformed)
            assert bad.returncode == 2, bad.stderr
            assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
            assert "not a database URL" in bad.stderr
            assert leaked(bad.stderr + bad.stdout) == []
