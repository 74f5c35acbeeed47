"""A dead-lettered turn, re-queued with `frontdesk queue retry-dead` once its engine is fixed, is
answered afresh, through a gateway that runs its channel now (the one that took the message is
gone), as real processes against Redis, PostgreSQL, the Telegram stand-in and an OpenAI-compatible
stand-in that fails until told otherwise."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from frontdesk import texts
from frontdesk.engine.queue import RedisQueue
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.telegram_api import FakeTelegram
from tests.support import until

ALICE = 1001
CLI = [sys.executable, "-m", "frontdesk.cli"]


async def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """A `frontdesk` command in a thread: the stand-ins keep serving on this loop meanwhile."""
    command = [*CLI, *args]
    return await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=60
    )


async def cli_json(env: dict[str, str], *args: str) -> Any:
    done = await cli(env, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def spawn(env: dict[str, str], role: str, log: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(*CLI, role, env=env, stderr=log.open("wb"))


async def test_a_turn_retried_from_the_dead_letters_gets_one_real_answer_through_a_new_gateway(
    redis_url: str, queue_prefix: str, pg_fresh: str, tmp_path: Path
) -> None:
    async with FakeTelegram() as telegram, FakeOpenAI(failing=503) as engine:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FRONTDESK_")},
            "FRONTDESK_TELEGRAM_TOKEN": telegram.token,
            "FRONTDESK_TELEGRAM_API_URL": telegram.base_url,
            "FRONTDESK_REDIS_URL": redis_url,
            "FRONTDESK_QUEUE_PREFIX": queue_prefix,
            "FRONTDESK_DATABASE_URL": pg_fresh,
            "FRONTDESK_ENGINE": "openai",
            "FRONTDESK_OPENAI_BASE_URLS": engine.base_url,
            "FRONTDESK_QUEUE_MAX_DELIVERIES": "2",
            "FRONTDESK_QUEUE_CLAIM_IDLE_MS": "300",
        }
        assert (await cli(env, "db", "upgrade")).returncode == 0
        queue = RedisQueue(redis_url, consumer="test", prefix=queue_prefix)
        logs = [tmp_path / name for name in ("worker.log", "gateway-1.log", "gateway-2.log")]
        procs = [await spawn(env, "worker", logs[0]), await spawn(env, "gateway", logs[1])]
        try:
            await until(lambda: queue.gateway_for("telegram"))
            first = await queue.gateway_for("telegram")

            telegram.private_message("How do I return my shoes?")
            # every try fails: the turn is dead-lettered and the user told so
            await telegram.wait_for(lambda t: len(t.messages_in(ALICE)) == 1, timeout=60)
            assert telegram.messages_in(ALICE)[0]["text"] == texts.GAVE_UP
            status = await cli_json(env, "queue", "status")
            assert (status["dead"], status["pending"]) == (1, 0)
            [conv] = await cli_json(env, "conversations", "list")
            shown = await cli_json(env, "conversations", "show", str(conv["id"]))
            assert [m["status"] for m in shown["messages"]] == ["ok", "error"]

            # The engine is fixed; the gateway that took the message dies, another starts
            engine.failing = None
            procs[1].send_signal(signal.SIGKILL)
            await procs[1].wait()
            procs[1] = await spawn({**env, "FRONTDESK_GATEWAY_ID": "second"}, "gateway", logs[2])

            async def new_gateway_runs() -> bool:
                return (await queue.gateway_for("telegram")) not in (None, first)

            await until(new_gateway_runs)

            async def first_gone() -> bool:  # its lease lapses 10 s after the kill
                return not await queue.gateway_alive(str(first))

            await until(first_gone)
            retried = await cli(env, "queue", "retry-dead", "--yes")
            assert retried.returncode == 0 and "re-queued 1 turn" in retried.stdout

            await telegram.wait_for(lambda t: len(t.messages_in(ALICE)) == 2, timeout=60)

            async def settled() -> bool:
                s = await cli_json(env, "queue", "status")
                return s["pending"] == 0 and s["lag"] == 0

            await until(settled)
            await asyncio.sleep(1)  # anything more would be a second answer: there is none
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
            codes = [await asyncio.wait_for(p.wait(), 30) for p in procs]
            await queue.stop()
        shown_texts = [m["text"] for m in telegram.messages_in(ALICE)]
        assert shown_texts == [texts.GAVE_UP, "Here is the real answer."]
        assert len(engine.completions(200)) == 1  # answered once, by the fixed engine
        status = await cli_json(env, "queue", "status")
        assert (status["dead"], status["pending"]) == (0, 0)
        shown = await cli_json(env, "conversations", "show", str(conv["id"]))
        messages = shown["messages"]
        assert [(m["role"], m["status"]) for m in messages] == [("user", "ok"), ("assistant", "ok")]
        assert messages[1]["content"] == "Here is the real answer." and messages[1]["error"] is None
    assert codes == [0, 0]  # the worker and the new gateway stop cleanly on SIGTERM
    for log in (logs[0], logs[2]):
        assert "Traceback" not in log.read_text()
