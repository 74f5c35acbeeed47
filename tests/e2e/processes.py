"""Real frontdesk processes for the end-to-end tests: ``Processes`` starts, kills and stops them,
each logging to a file of its own; the helpers wait for what the stand-ins show."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

from frontdesk.engine.queue import RedisQueue
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.slack_api import FakeSlack
from tests.fakes.telegram_api import FakeTelegram
from tests.support import until

CLI = [sys.executable, "-m", "frontdesk.cli"]


class Processes:
    """The frontdesk processes of one test, each logging to a file of its own."""

    def __init__(self, env: dict[str, str], folder: Path) -> None:
        self.env, self.folder = env, folder
        self.running: dict[str, asyncio.subprocess.Process] = {}
        self.logs: list[Path] = []

    async def start(self, name: str, role: str, **env: str) -> asyncio.subprocess.Process:
        log = self.folder / f"{name}-{len(self.logs)}.log"
        self.logs.append(log)
        proc = await asyncio.create_subprocess_exec(
            *CLI, role, env={**self.env, **env}, stderr=log.open("wb")
        )
        self.running[name] = proc
        return proc

    async def kill(self, name: str) -> None:
        proc = self.running.pop(name)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()

    async def stop_all(self) -> list[int]:
        procs = list(self.running.values())
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        return [await asyncio.wait_for(p.wait(), 30) for p in procs]

    def tracebacks(self) -> list[str]:
        return [log.name for log in self.logs if "Traceback" in log.read_text()]


async def shows(fake: FakeTelegram | FakeSlack, chat: Any, text: str) -> None:
    """Wait until the bot's first message in ``chat`` shows ``text`` (all of it, or within)."""

    def showing(f: Any) -> bool:
        messages = f.messages_in(chat)
        return bool(messages) and text in messages[0]["text"]

    await fake.wait_for(showing, timeout=60)


async def gateway_up(queue: RedisQueue, platform: str) -> None:
    await until(lambda: queue.gateway_for(platform), within=30)


def telegram_env(env: dict[str, str], telegram: FakeTelegram, engine: FakeOpenAI) -> dict[str, str]:
    return {
        **env,
        "FRONTDESK_TELEGRAM_TOKEN": telegram.token,
        "FRONTDESK_TELEGRAM_API_URL": telegram.base_url,
        "FRONTDESK_TELEGRAM_EDIT_INTERVAL": "0.3",
        "FRONTDESK_OPENAI_BASE_URLS": engine.base_url,
    }
