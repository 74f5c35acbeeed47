"""Telemetry as operators run it: a real Prometheus (Debian's) scrapes a `frontdesk gateway` and a
`frontdesk worker` during a turn, with deploy/prometheus/alerts.yml loaded; promtool checks the
metrics and the rules; /readyz fails while Redis is down and recovers after it."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.processes import Processes, telegram_env
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.telegram_api import FakeTelegram
from tests.support import dashboard_queries, free_port, until

ANSWER = "Happy to help."
DEPLOY = Path(__file__).parents[2] / "deploy" / "prometheus"


async def get(url: str) -> tuple[int, str]:
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status, await response.text()
    except aiohttp.ClientError:
        return 0, ""


async def query(prometheus: str, expr: str) -> float | None:
    """The value of a PromQL expression that gives one series, None while it gives none."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{prometheus}/api/v1/query", params={"query": expr}) as response,
    ):
        found = (await response.json())["data"]["result"]
    return float(found[0]["value"][1]) if found else None


@pytest.fixture
async def prometheus(tmp_path: Path) -> AsyncIterator[tuple[str, list[int]]]:
    """A Prometheus scraping a gateway and a worker every second on the ports it yields, with
    the alert rules operators get: its URL, and [gateway port, worker port]."""
    ports = [free_port(), free_port()]
    shutil.copy(DEPLOY / "alerts.yml", tmp_path / "alerts.yml")
    config = (DEPLOY / "prometheus.yml").read_text()
    config = config.replace("scrape_interval: 15s", "scrape_interval: 1s")
    config = config.replace("127.0.0.1:9101", f"127.0.0.1:{ports[0]}")
    config = config.replace("127.0.0.1:9102", f"127.0.0.1:{ports[1]}")
    (tmp_path / "prometheus.yml").write_text(config)
    web = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        "prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{web}",
        stdout=log, stderr=log,
    )  # fmt: skip
    url = f"http://127.0.0.1:{web}"
    try:
        await until(lambda: _ready(url), within=30)
        yield url, ports
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
        log.close()


async def _ready(url: str) -> bool:
    status, _ = await get(f"{url}/-/ready")
    return status == 200


def metric_names(exposition: str) -> set[str]:
    return set(re.findall(r"^# TYPE (\S+) ", exposition, re.MULTILINE))


def named_in_rules(rules: str) -> set[str]:
    return set(re.findall(r"\b(frontdesk_[a-z_]+)", rules))


def base(name: str) -> str:
    """A metric's name without the suffix of its samples (``_total``, ``_bucket``, …)."""
    return re.sub(r"_(total|bucket|count|sum|created)$", "", name)


async def test_prometheus_scrapes_a_gateway_and_a_worker_during_a_turn(
    env: dict[str, str], tmp_path: Path, prometheus: tuple[str, list[int]]
) -> None:
    url, (gateway_port, worker_port) = prometheus
    async with FakeTelegram() as telegram, FakeOpenAI(ANSWER, failing=None) as engine:
        procs = Processes(telegram_env(env, telegram, engine), tmp_path)
        try:
            await procs.start("worker", "worker", FRONTDESK_METRICS_PORT=str(worker_port))
            await procs.start("gateway", "gateway", FRONTDESK_METRICS_PORT=str(gateway_port),
                              FRONTDESK_HTTP_PORT=str(free_port()))  # fmt: skip
            for port in (gateway_port, worker_port):
                await until(lambda p=port: _status(f"http://127.0.0.1:{p}/readyz", 200), within=30)
            telegram.private_message("hello", user_id=3001)
            await telegram.wait_for(
                lambda f: [m["text"] for m in f.messages_in(3001)] == [ANSWER], timeout=30
            )
            answered = 'sum(frontdesk_turns_total{platform="telegram",outcome="answered"})'
            await until(lambda: _equals(url, answered, 1.0), within=30)
            latency = 'sum(frontdesk_turn_seconds_count{platform="telegram"})'
            first = 'sum(frontdesk_time_to_first_token_seconds_count{platform="telegram"})'
            messages = 'sum(frontdesk_messages_total{platform="telegram"})'
            sends = 'sum(frontdesk_platform_calls_total{platform="telegram",method="sendMessage"})'
            # (the gateway's scrape may come a second after the worker's)
            await until(lambda: _equals(url, messages, 1.0), within=10)
            assert await query(url, latency) == 1.0
            assert await query(url, first) == 1.0
            assert (await query(url, sends) or 0) >= 1
            assert await query(url, 'sum(frontdesk_tokens_total{direction="out"})') > 0
            assert await query(url, 'min(up{job=~"frontdesk-.*"})') == 1.0
            assert await query(url, "min(frontdesk_ready)") == 1.0

            # every metric the alert rules name is exported, and promtool finds no fault
            exported: set[str] = set()
            for port in (gateway_port, worker_port):
                status, body = await get(f"http://127.0.0.1:{port}/metrics")
                assert status == 200
                exported |= metric_names(body)
                assert "3001" not in body  # no label names the user or the chat
                linted = await asyncio.to_thread(
                    subprocess.run, ["promtool", "check", "metrics"], input=body.encode(),
                    capture_output=True,
                )  # fmt: skip
                assert linted.returncode == 0, linted.stdout + linted.stderr
            rules = (DEPLOY / "alerts.yml").read_text()
            exported_bases = {base(name) for name in exported}
            assert named_in_rules(rules)
            assert {base(n) for n in named_in_rules(rules)} <= exported_bases
            # the dashboard: every frontdesk metric it names exists (vLLM's: the vLLM test), and
            # each of its queries is PromQL that Prometheus runs
            queries = dashboard_queries()
            named = {base(n) for q in queries for n in re.findall(r"\bfrontdesk_[a-z_]+", q)}
            assert len(named) >= 15 and named <= exported_bases, named - exported_bases
            for expr in queries:
                assert await _runs(url, expr), expr
            rules_ok = await _rules_loaded(url)
            assert rules_ok == {"FrontdeskDown", "FrontdeskNotReady", "FrontdeskEngineDied",
                                "FrontdeskQueueLagGrowing", "FrontdeskDeadLetters",
                                "FrontdeskRateLimited"}  # fmt: skip
        finally:
            codes = await procs.stop_all()
    assert codes == [0, 0]
    assert procs.tracebacks() == []


async def _runs(prometheus: str, expr: str) -> bool:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{prometheus}/api/v1/query", params={"query": expr}) as response,
    ):
        return response.status == 200 and (await response.json())["status"] == "success"


async def _status(url: str, wanted: int) -> bool:
    return (await get(url))[0] == wanted


async def _equals(url: str, expr: str, value: float) -> bool:
    return await query(url, expr) == value


async def _rules_loaded(url: str) -> set[str]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/api/v1/rules") as response:
        groups: list[dict[str, Any]] = (await response.json())["data"]["groups"]
    return {rule["name"] for group in groups for rule in group["rules"]}


def test_the_alert_rules_pass_promtool() -> None:
    checked = subprocess.run(
        ["promtool", "check", "rules", str(DEPLOY / "alerts.yml")], capture_output=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = subprocess.run(
        ["promtool", "check", "config", str(DEPLOY / "prometheus.yml")], capture_output=True
    )
    assert config.returncode == 0, config.stdout + config.stderr


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[Any]:
    """A Redis of this test's own, which it can stop and start again on the same port."""
    port = free_port()

    class Server:
        url = f"redis://127.0.0.1:{port}/0"
        proc: asyncio.subprocess.Process | None = None

        async def start(self) -> None:
            self.proc = await asyncio.create_subprocess_exec(
                "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(tmp_path),
                stdout=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            await until(lambda: _redis_answers(port), within=10)

        async def stop(self) -> None:
            if self.proc is not None and self.proc.returncode is None:
                self.proc.send_signal(signal.SIGKILL)
                await self.proc.wait()

    server = Server()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _redis_answers(port: int) -> bool:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.write(b"PING\r\n")
    answer = await reader.readline()
    writer.close()
    return answer.startswith(b"+PONG")


async def _readiness(port: int) -> tuple[int, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/readyz") as response,
    ):
        return response.status, (await response.json())["checks"]


async def test_readyz_fails_while_redis_or_the_engine_is_down_and_recovers_after(
    env: dict[str, str], tmp_path: Path, own_redis: Any
) -> None:
    ports = {"gateway": free_port(), "worker": free_port()}
    async with FakeTelegram() as telegram, FakeOpenAI(ANSWER, failing=None) as engine:
        procs = Processes(
            {**telegram_env(env, telegram, engine), "FRONTDESK_REDIS_URL": own_redis.url},
            tmp_path,
        )
        try:
            await procs.start("worker", "worker", FRONTDESK_METRICS_PORT=str(ports["worker"]))
            await procs.start("gateway", "gateway", FRONTDESK_METRICS_PORT=str(ports["gateway"]),
                              FRONTDESK_HTTP_PORT=str(free_port()))  # fmt: skip
            for port in ports.values():
                await until(lambda p=port: _status(f"http://127.0.0.1:{p}/readyz", 200),
                            within=30)  # fmt: skip
            status, checks = await _readiness(ports["worker"])
            assert checks == {"redis": "ok", "database": "ok", "engine": "ok"}

            await own_redis.stop()
            for port in ports.values():
                await until(lambda p=port: _status(f"http://127.0.0.1:{p}/readyz", 503),
                            within=10)  # fmt: skip
                status, checks = await _readiness(port)
                assert status == 503
                assert checks["redis"] != "ok" and checks["database"] == "ok"
                assert (await get(f"http://127.0.0.1:{port}/healthz"))[0] == 200  # alive

            await own_redis.start()
            for port in ports.values():
                await until(lambda p=port: _status(f"http://127.0.0.1:{p}/readyz", 200),
                            within=15)  # fmt: skip
            telegram.private_message("hello", user_id=3002)  # and the pair works again
            await telegram.wait_for(
                lambda f: [m["text"] for m in f.messages_in(3002)] == [ANSWER], timeout=30
            )

            await engine.stop()  # the engine's server gone: the worker is not ready, the gateway is
            await until(lambda: _status(f"http://127.0.0.1:{ports['worker']}/readyz", 503),
                        within=10)  # fmt: skip
            status, checks = await _readiness(ports["worker"])
            assert checks["engine"] != "ok" and checks["redis"] == checks["database"] == "ok"
            assert (await _readiness(ports["gateway"]))[0] == 200
        finally:
            codes = await procs.stop_all()
    assert codes == [0, 0]


async def test_a_worker_is_alive_but_not_ready_while_its_engine_starts(
    env: dict[str, str], tmp_path: Path
) -> None:
    """The endpoints come up before the engine: while it loads (here, an OpenAI-compatible
    server slow to list its models), /healthz says alive and /readyz 503 names the engine."""
    port = free_port()
    async with FakeTelegram() as telegram, FakeOpenAI(ANSWER, models_delay_s=8) as engine:
        procs = Processes(telegram_env(env, telegram, engine), tmp_path)
        try:
            await procs.start("worker", "worker", FRONTDESK_METRICS_PORT=str(port))
            await until(lambda: _status(f"http://127.0.0.1:{port}/healthz", 200), within=20)
            status, checks = await _readiness(port)
            assert status == 503 and checks["engine"] == "the engine is starting"
            assert checks["redis"] == checks["database"] == "ok"
            await until(lambda: _status(f"http://127.0.0.1:{port}/readyz", 200), within=20)
        finally:
            codes = await procs.stop_all()
    assert codes == [0]


async def test_every_log_line_of_a_turn_carries_its_turn_id_and_none_holds_a_secret(
    env: dict[str, str], tmp_path: Path
) -> None:
    """JSON lines (stderr is not a terminal), at DEBUG: the gateway's and the worker's lines
    about the turn carry its ids; no line holds the token, and no INFO line the user's text."""
    said = "where is parcel zebra-7781"
    async with FakeTelegram() as telegram, FakeOpenAI(ANSWER, failing=None) as engine:
        procs = Processes(
            {**telegram_env(env, telegram, engine), "FRONTDESK_LOG_LEVEL": "DEBUG"}, tmp_path
        )
        try:
            await procs.start("worker", "worker")
            await procs.start("gateway", "gateway", FRONTDESK_HTTP_PORT=str(free_port()))
            await until(lambda: telegram.calls_to("getUpdates"), within=30)
            telegram.private_message(said, user_id=3003)
            await telegram.wait_for(
                lambda f: [m["text"] for m in f.messages_in(3003)] == [ANSWER], timeout=30
            )
            await asyncio.sleep(0.5)  # the worker's last lines of the turn are written
        finally:
            codes = await procs.stop_all()
        token = telegram.token
    assert codes == [0, 0]
    lines = {
        log.stem.rsplit("-", 1)[0]: [json.loads(line) for line in log.read_text().splitlines()]
        for log in procs.logs
    }  # fmt: skip  (every line is one JSON object)
    turn_ids = {line["turn_id"] for found in lines.values() for line in found if "turn_id" in line}
    [turn_id] = turn_ids  # one turn, one id
    for process in ("gateway", "worker"):
        of_turn = [line for line in lines[process] if line.get("turn_id") == turn_id]
        assert of_turn, f"the {process} logged nothing with the turn's id"
        assert all(line["conversation_id"] and line["platform"] == "telegram" for line in of_turn)
        # a line that names the turn was written inside it
        naming = [line for line in lines[process]
                  if re.search(rf"\b{turn_id}\b", line["message"])]  # fmt: skip
        assert naming and all(line.get("turn_id") == turn_id for line in naming)
    everything = [line for found in lines.values() for line in found]
    assert not [line for line in everything if token in json.dumps(line)]
    assert not [line for line in everything
                if line["level"] != "DEBUG" and said in line["message"]]  # fmt: skip
