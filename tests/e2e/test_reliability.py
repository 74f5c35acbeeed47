"""Exactly one complete reply per accepted message, through the death of any process: gateways and
workers as real processes (`frontdesk gateway`, `frontdesk worker`), killed with SIGKILL mid-reply,
against real Redis and PostgreSQL, the Telegram and Slack stand-ins, and an OpenAI-compatible
stand-in that streams slowly, and pauses a reply halfway until the test has struck, so that the
reply is being written when it strikes, however slow the machine."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import redis.asyncio as aioredis

from frontdesk import texts
from frontdesk.engine.queue import RedisQueue
from tests.e2e.processes import CLI, Processes, gateway_up, shows, telegram_env
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.slack_api import FakeSlack
from tests.fakes.telegram_api import FakeTelegram
from tests.support import free_port, until

ALICE = 1001
LONG_REPLY = " ".join(f"word{i}" for i in range(40))
SHOWN = 10  # the engine pauses after so many words until the test lets it go on
FIRST_PART = " ".join(LONG_REPLY.split(" ")[:SHOWN])


async def test_a_gateway_killed_mid_reply_completes_the_same_telegram_message_after_restart(
    env: dict[str, str], redis_url: str, queue_prefix: str, tmp_path: Path
) -> None:
    async with (
        FakeTelegram() as telegram,
        FakeOpenAI(LONG_REPLY, failing=None, word_delay_s=0.12, pause_after=SHOWN) as engine,
    ):
        procs = Processes(telegram_env(env, telegram, engine), tmp_path)
        queue = RedisQueue(redis_url, consumer="test", prefix=queue_prefix)
        try:
            await procs.start("worker", "worker")
            await procs.start("gateway", "gateway")
            await gateway_up(queue, "telegram")

            telegram.private_message("Tell me a long story")
            await shows(telegram, ALICE, FIRST_PART)
            await procs.kill("gateway")  # mid-reply: the message shows part of the answer
            assert telegram.messages_in(ALICE)[0]["text"] == FIRST_PART

            await procs.start("gateway", "gateway")
            engine.go_on()
            await shows(telegram, ALICE, LONG_REPLY)
            await asyncio.sleep(1.5)  # a second message would show by now
        finally:
            codes = await procs.stop_all()
            await queue.stop()
        [message] = telegram.messages_in(ALICE)  # completed in place: no second message
        assert message["text"] == LONG_REPLY
        assert len(telegram.calls_to("sendMessage", ALICE)) == 1
        assert len(engine.completions()) == 1  # the worker answered once; the gateway resumed
    assert codes == [0, 0]
    assert procs.tracebacks() == []


async def test_a_gateway_killed_mid_reply_completes_the_same_slack_message_after_restart(
    env: dict[str, str], redis_url: str, queue_prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    async with (
        FakeSlack() as slack,
        FakeOpenAI(LONG_REPLY, failing=None, word_delay_s=0.12, pause_after=SHOWN) as engine,
    ):
        slack_env = {
            **env,
            "FRONTDESK_SLACK_BOT_TOKEN": slack.bot_token,
            "FRONTDESK_SLACK_SIGNING_SECRET": slack.signing_secret,
            "FRONTDESK_SLACK_API_URL": slack.base_url,
            "FRONTDESK_HTTP_PORT": str(port),
            "FRONTDESK_OPENAI_BASE_URLS": engine.base_url,
        }
        procs = Processes(slack_env, tmp_path)
        queue = RedisQueue(redis_url, consumer="test", prefix=queue_prefix)
        url = f"http://127.0.0.1:{port}/slack/events"
        dm = "D0ALICE"
        try:
            await procs.start("worker", "worker")
            await procs.start("gateway", "gateway")
            await gateway_up(queue, "slack")

            status, _took = await slack.post_event(url, slack.dm("Tell me a long story"))
            assert status == 200
            await shows(slack, dm, FIRST_PART)
            await procs.kill("gateway")
            assert slack.messages_in(dm)[0]["text"] == FIRST_PART

            await procs.start("gateway", "gateway")
            engine.go_on()
            await shows(slack, dm, LONG_REPLY)
            await asyncio.sleep(1.5)
        finally:
            codes = await procs.stop_all()
            await queue.stop()
        [message] = slack.messages_in(dm)
        assert message["text"] == LONG_REPLY
        assert len(slack.calls_to("chat.postMessage", dm)) == 1
        assert len(engine.completions()) == 1
    assert codes == [0, 0]
    assert procs.tracebacks() == []


async def test_a_gateway_stopped_mid_reply_hands_it_to_another_that_runs_the_same_channel(
    env: dict[str, str], redis_url: str, queue_prefix: str, tmp_path: Path
) -> None:
    ports = [free_port(), free_port()]
    async with (
        FakeSlack() as slack,
        FakeOpenAI(LONG_REPLY, failing=None, word_delay_s=0.15, pause_after=SHOWN) as engine,
    ):
        slack_env = {
            **env,
            "FRONTDESK_SLACK_BOT_TOKEN": slack.bot_token,
            "FRONTDESK_SLACK_SIGNING_SECRET": slack.signing_secret,
            "FRONTDESK_SLACK_API_URL": slack.base_url,
            "FRONTDESK_OPENAI_BASE_URLS": engine.base_url,
        }
        procs = Processes(slack_env, tmp_path)
        queue = RedisQueue(redis_url, consumer="test", prefix=queue_prefix)
        dm = "D0ALICE"
        try:
            await procs.start("worker", "worker")
            for name, port in zip(("gw-a", "gw-b"), ports, strict=True):
                await procs.start(
                    name, "gateway", FRONTDESK_GATEWAY_ID=name, FRONTDESK_HTTP_PORT=str(port)
                )
            await until(lambda: _both_announced(queue), within=30)

            url = f"http://127.0.0.1:{ports[0]}/slack/events"  # the message reaches gw-a
            status, _took = await slack.post_event(url, slack.dm("Tell me a long story"))
            assert status == 200
            await shows(slack, dm, FIRST_PART)
            stopped = procs.running.pop("gw-a")  # a deploy stops it: SIGTERM, 1 s of grace
            stopped.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(stopped.wait(), 10) == 0
            assert slack.messages_in(dm)[0]["text"] == FIRST_PART
            engine.go_on()

            await shows(slack, dm, LONG_REPLY)
            await asyncio.sleep(1.5)
        finally:
            codes = await procs.stop_all()
            await queue.stop()
        [message] = slack.messages_in(dm)  # gw-b finished gw-a's message, posted none of its own
        assert message["text"] == LONG_REPLY
        assert len(slack.calls_to("chat.postMessage", dm)) == 1
        assert len(engine.completions()) == 1
    assert codes == [0, 0]
    assert procs.tracebacks() == []
    assert "taking over the reply" in procs.logs[2].read_text()  # gw-b's log


async def _both_announced(queue: RedisQueue) -> bool:
    live = await queue.redis.zrangebyscore(queue.gateways_prefix + "slack", "-inf", "+inf")
    return set(live) == {"gw-a", "gw-b"}


async def test_a_worker_killed_mid_reply_leaves_one_message_with_the_whole_answer(
    env: dict[str, str], redis_url: str, queue_prefix: str, tmp_path: Path
) -> None:
    async with (
        FakeTelegram() as telegram,
        FakeOpenAI(LONG_REPLY, failing=None, word_delay_s=0.08, pause_after=SHOWN) as engine,
    ):
        procs = Processes(telegram_env(env, telegram, engine), tmp_path)
        queue = RedisQueue(redis_url, consumer="test", prefix=queue_prefix)
        try:
            await procs.start("gateway", "gateway")
            await procs.start("doomed", "worker")
            await gateway_up(queue, "telegram")

            telegram.private_message("Tell me a long story")
            await shows(telegram, ALICE, "word5")
            await procs.kill("doomed")
            engine.go_on()
            await procs.start("worker", "worker")  # takes the turn over once it is idle
            await shows(telegram, ALICE, LONG_REPLY)
            await asyncio.sleep(1.5)
        finally:
            codes = await procs.stop_all()
            await queue.stop()
        [message] = telegram.messages_in(ALICE)
        assert message["text"] == LONG_REPLY
        assert len(engine.completions()) == 2  # answered afresh by the second worker
    assert codes == [0, 0]
    assert procs.tracebacks() == []


async def test_two_workers_answer_three_quick_messages_in_order_each_with_the_earlier_replies(
    env: dict[str, str], redis_url: str, queue_prefix: str, tmp_path: Path
) -> None:
    async with (
        FakeTelegram() as telegram,
        FakeOpenAI(failing=None, word_delay_s=0.1, echo=True) as engine,
    ):
        procs = Processes(telegram_env(env, telegram, engine), tmp_path)
        queue = RedisQueue(redis_url, consumer="test", prefix=queue_prefix)
        try:
            await procs.start("worker-1", "worker")
            await procs.start("worker-2", "worker")
            await procs.start("gateway", "gateway")
            await gateway_up(queue, "telegram")

            for word in ("one", "two", "three"):  # within 100 ms
                telegram.private_message(word)
                await asyncio.sleep(0.03)
            expected = ["You said: one", "You said: two", "You said: three"]
            await telegram.wait_for(lambda t: len(t.messages_in(ALICE)) == 3, timeout=60)
            await telegram.wait_for(
                lambda t: [m["text"] for m in t.messages_in(ALICE)] == expected, timeout=30
            )
        finally:
            codes = await procs.stop_all()
            await queue.stop()
        prompts = [call.body["messages"] for call in engine.completions()]
        assert [p[-1]["content"] for p in prompts] == ["one", "two", "three"]
        # each prompt holds the earlier messages and their replies
        assert [m["content"] for m in prompts[2] if m["role"] != "system"] == [
            "one",
            "You said: one",
            "two",
            "You said: two",
            "three",
        ]
    assert codes == [0, 0, 0]
    assert procs.tracebacks() == []


async def test_turns_lost_with_redis_data_are_answered_once_by_the_sweep(
    env: dict[str, str], redis_url: str, queue_prefix: str, tmp_path: Path
) -> None:
    """A failover to a replica without the latest writes (or a restart without AOF): the turns,
    the live-turn index and the leases are gone, while PostgreSQL holds the messages."""
    async with (
        FakeTelegram() as telegram,
        FakeOpenAI(failing=None, word_delay_s=0.05, echo=True) as engine,
    ):
        procs = Processes(telegram_env(env, telegram, engine), tmp_path)
        queue = RedisQueue(redis_url, consumer="test", prefix=queue_prefix)
        users = [ALICE + i for i in range(6)]
        try:
            await procs.start("gateway", "gateway")
            await gateway_up(queue, "telegram")
            for user in users:  # no worker yet: the turns wait in the stream
                telegram.private_message(f"question of {user}", user_id=user)
            await until(lambda: _stream_length(queue, 6), within=30)

            wiped = await _wipe(redis_url, queue_prefix)
            assert wiped > 0
            await gateway_up(queue, "telegram")  # announced again within seconds
            await procs.start("worker", "worker")
            await telegram.wait_for(
                lambda t: all(len(t.messages_in(u)) == 1 for u in users), timeout=60
            )
            await asyncio.sleep(4)  # more sweeps: a second answer would show by now
        finally:
            codes = await procs.stop_all()
            await queue.stop()
        for user in users:
            [message] = telegram.messages_in(user)
            assert message["text"] == f"You said: question of {user}"
        assert len(engine.completions()) == len(users)
    assert codes == [0, 0]
    assert procs.tracebacks() == []


async def _stream_length(queue: RedisQueue, count: int) -> bool:
    return int(await queue.redis.xlen(queue.turns_key)) >= count


async def _wipe(redis_url: str, prefix: str) -> int:
    client = aioredis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        return int(await client.delete(*keys)) if keys else 0
    finally:
        await client.aclose()


async def test_a_worker_stopped_mid_reply_hands_the_turn_back_for_another_to_take_at_once(
    env: dict[str, str], redis_url: str, queue_prefix: str, tmp_path: Path
) -> None:
    async with (
        FakeTelegram() as telegram,
        FakeOpenAI(LONG_REPLY, failing=None, word_delay_s=0.1, pause_after=SHOWN) as engine,
    ):
        # a claim timeout of a minute: a turn left pending would wait that long
        slow_claims = {
            **telegram_env(env, telegram, engine),
            "FRONTDESK_QUEUE_CLAIM_IDLE_MS": "60000",
        }
        procs = Processes(slow_claims, tmp_path)
        queue = RedisQueue(redis_url, consumer="test", prefix=queue_prefix)
        try:
            await procs.start("gateway", "gateway")
            await procs.start("first", "worker")
            await gateway_up(queue, "telegram")
            telegram.private_message("Tell me a long story")
            await shows(telegram, ALICE, "word3")
            first = procs.running.pop("first")
            first.send_signal(signal.SIGTERM)  # 1 s of grace: the engine is paused
            assert await asyncio.wait_for(first.wait(), 15) == 0
            engine.go_on()
            await procs.start("second", "worker")
            await shows(telegram, ALICE, LONG_REPLY)
        finally:
            codes = await procs.stop_all()
            await queue.stop()
        [message] = telegram.messages_in(ALICE)
        assert message["text"] == LONG_REPLY
        assert len(engine.completions()) == 2  # answered afresh by the second worker
    assert codes == [0, 0]
    assert procs.tracebacks() == []
    assert "handed 1 unfinished turns back" in procs.logs[1].read_text()


async def test_a_shell_killed_mid_reply_says_it_resumes_and_prints_the_whole_reply_on_restart(
    env: dict[str, str], redis_url: str, queue_prefix: str, tmp_path: Path
) -> None:
    """The console cannot take back what it printed: a restarted shell (same user, so the same
    gateway id) says it is resuming, then prints the reply whole."""
    async with FakeOpenAI(LONG_REPLY, failing=None, word_delay_s=0.1) as engine:
        shell_env = {**env, "FRONTDESK_OPENAI_BASE_URLS": engine.base_url, "USER": "ada"}
        procs = Processes(shell_env, tmp_path)
        try:
            await procs.start("worker", "worker")
            first = await asyncio.create_subprocess_exec(
                *CLI, "shell", env=shell_env, cwd=tmp_path,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            assert first.stdin is not None and first.stdout is not None
            first.stdin.write(b"Tell me a long story\n")
            await first.stdin.drain()
            printed = b""
            while b"word5" not in printed:
                printed += await asyncio.wait_for(first.stdout.read(64), 60)
            first.kill()  # mid-reply
            await first.wait()

            again = await asyncio.create_subprocess_exec(
                *CLI, "shell", env=shell_env, cwd=tmp_path,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            # no new input: the shell ends at end of input, once the resumed reply is shown
            out, err = await asyncio.wait_for(again.communicate(b""), 60)
        finally:
            codes = await procs.stop_all()
        text = out.decode()
        assert texts.RESUMING in text
        assert LONG_REPLY in text.split(texts.RESUMING, 1)[1]
        assert again.returncode == 0, err.decode()
        assert len(engine.completions()) == 1
    assert codes == [0]
    assert procs.tracebacks() == []


async def test_an_embedded_shell_killed_mid_reply_shows_the_whole_reply_after_restart(
    env: dict[str, str], tmp_path: Path
) -> None:
    """Embedded (no Redis: the queue and the worker live in the shell): the restarted shell's
    sweep answers the message the first one was cut off in, and the console says so, then
    prints the whole reply, once."""
    async with FakeOpenAI(LONG_REPLY, failing=None, word_delay_s=0.1) as engine:
        shell_env = {
            k: v
            for k, v in env.items()
            if k not in ("FRONTDESK_REDIS_URL", "FRONTDESK_DATABASE_URL")
        }
        shell_env |= {
            "FRONTDESK_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'shell.db'}",
            "FRONTDESK_OPENAI_BASE_URLS": engine.base_url,
            "USER": "ada",
        }

        async def shell() -> asyncio.subprocess.Process:
            return await asyncio.create_subprocess_exec(
                *CLI, "shell", env=shell_env, cwd=tmp_path,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip

        async def read_until(proc: asyncio.subprocess.Process, wanted: str) -> str:
            assert proc.stdout is not None
            printed = b""
            while wanted.encode() not in printed:
                chunk = await asyncio.wait_for(proc.stdout.read(64), 60)
                assert chunk, f"the shell ended before printing {wanted!r}: {printed!r}"
                printed += chunk
            return printed.decode()

        first = await shell()
        assert first.stdin is not None
        first.stdin.write(b"Tell me a long story\n")
        await first.stdin.drain()
        await read_until(first, "word5")
        first.kill()  # mid-reply
        await first.wait()

        again = await shell()
        # the restarted shell waits at its prompt; its sweep finds the message within seconds
        shown = await read_until(again, LONG_REPLY)
        assert again.stdin is not None
        again.stdin.close()
        out, err = await asyncio.wait_for(again.communicate(), 60)
    text = shown + out.decode()
    assert texts.RESUMING in text.split("word0", 1)[0]
    assert text.count(LONG_REPLY) == 1
    assert again.returncode == 0, err.decode()
    assert "Traceback" not in err.decode()
    assert len(engine.completions()) == 2  # the cut-off attempt, and the sweep's
