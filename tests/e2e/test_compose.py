"""deploy/compose/docker-compose.yml: valid against the Compose Specification, and its topology
run here as processes (there is no container engine on these machines): each frontdesk
service's command and environment read from the file, Redis and PostgreSQL the local ones,
`.env` made from `.env.example` as its header says. One Telegram turn goes through it, answered
by the bundled model, and each service's health check passes."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from frontdesk import texts
from tests.e2e.processes import CLI, Processes
from tests.fakes.telegram_api import FakeTelegram
from tests.support import free_port, until

COMPOSE = Path(__file__).parents[2] / "deploy" / "compose"


def compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())


def interpolated(value: str) -> str:
    """Compose's ``${NAME:-default}``, with nothing of the host's environment set."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    checker = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert checker is not None
    return subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True,
    )  # fmt: skip


def test_the_compose_file_is_valid_and_runs_only_real_frontdesk_commands(tmp_path: Path) -> None:
    checked = validate(COMPOSE / "docker-compose.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    broken = tmp_path / "docker-compose.yml"  # the check can fail: a misspelt key
    broken.write_text((COMPOSE / "docker-compose.yml").read_text().replace("command:", "comand:"))
    assert validate(broken).returncode != 0

    services = compose()["services"]
    assert {"redis", "postgres", "migrate", "gateway", "worker"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        if service.get("image", "").startswith("frontdesk"):
            command = [interpolated(part) for part in service["command"]]
            helped = subprocess.run([*CLI, *command, "--help"], capture_output=True, text=True)
            assert helped.returncode == 0, f"{name}: {command}: {helped.stderr}"
    redis = services["redis"]["command"]
    assert "--appendonly" in redis and redis[redis.index("--appendonly") + 1] == "yes"
    assert redis[redis.index("--maxmemory-policy") + 1] == "noeviction"
    gpu = services["worker-gpu"]
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert gpu["ipc"] == "host" and gpu["profiles"] == ["gpu"]


def service_env(
    service: dict[str, Any], dotenv: dict[str, str], local: dict[str, str]
) -> dict[str, str]:
    """A service's environment as compose gives it: the .env file, then its own ``environment``,
    with the addresses of the compose network's Redis and PostgreSQL made the local ones."""
    values = {**dotenv}
    for key, value in (service.get("environment") or {}).items():
        values[key] = interpolated(str(value))
    assert values["FRONTDESK_REDIS_URL"] == "redis://redis:6379/0"
    assert values["FRONTDESK_DATABASE_URL"].endswith("@postgres:5432/frontdesk")
    return {**values, **local}


async def test_the_compose_topology_answers_a_telegram_message(
    redis_url: str, queue_prefix: str, pg_fresh: str, tmp_path: Path
) -> None:
    services = compose()["services"]
    example = (COMPOSE / ".env.example").read_text()
    dotenv = dict(line.split("=", 1) for line in example.splitlines()
                  if line and not line.startswith("#"))  # fmt: skip
    base = {k: v for k, v in os.environ.items() if not k.startswith("FRONTDESK_")}
    async with FakeTelegram() as telegram:
        dotenv["FRONTDESK_TELEGRAM_TOKEN"] = telegram.token  # what the operator fills in
        local = {
            "FRONTDESK_REDIS_URL": redis_url,
            "FRONTDESK_QUEUE_PREFIX": queue_prefix,
            "FRONTDESK_DATABASE_URL": pg_fresh,
            "FRONTDESK_TELEGRAM_API_URL": telegram.base_url,  # the stand-in, not Telegram
            "FRONTDESK_BURST_MS": "0",
            "FRONTDESK_MAX_NEW_TOKENS": "24",
        }
        migrate = services["migrate"]
        done = await asyncio.to_thread(
            subprocess.run, [*CLI, *migrate["command"]],
            env={**base, **service_env(migrate, dotenv, local)}, capture_output=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

        procs = Processes(base, tmp_path)
        ports: dict[str, int] = {}
        try:
            for name in ("gateway", "worker"):
                service = services[name]
                ports[name] = free_port()  # the image's 9100, one port per process here
                env = service_env(service, dotenv, local)
                env |= {"FRONTDESK_METRICS_PORT": str(ports[name]),
                        "FRONTDESK_HTTP_PORT": str(free_port())}  # fmt: skip
                await procs.start(name, service["command"][0], **env)
            telegram.private_message("Hello! What can you do?", user_id=4001)
            await telegram.wait_for(lambda f: bool(f.messages_in(4001)), timeout=120)
            await asyncio.sleep(1)  # the streamed reply's last edit
            [reply] = telegram.messages_in(4001)
            failures = (texts.ENGINE_FAILED, texts.GAVE_UP, texts.QUEUE_DOWN,
                        texts.STORAGE_DOWN, texts.EMPTY_REPLY, texts.TIMED_OUT)  # fmt: skip
            assert reply["text"].strip() and reply["text"] not in failures  # the model's answer
            for name in ("gateway", "worker"):  # each service's own health check
                test = services[name]["healthcheck"]["test"]
                assert test[0] == "CMD"
                command = [part.replace("9100", str(ports[name])) for part in test[1:]]
                command[0] = sys.executable if command[0] == "python" else command[0]
                await until(lambda c=command: _passes(c), within=30)
        finally:
            codes = await procs.stop_all()
    assert codes == [0, 0]
    assert procs.tracebacks() == []


async def _passes(command: list[str]) -> bool:
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await proc.wait() == 0
