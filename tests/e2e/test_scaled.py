"""Scaled mode as it is deployed: `frontdesk worker` and `frontdesk shell` as separate processes
talking through Redis, with PostgreSQL, and the real model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.fixture
def scaled_env(redis_url: str, queue_prefix: str, pg_database: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("FRONTDESK_")},
        "FRONTDESK_REDIS_URL": redis_url,
        "FRONTDESK_QUEUE_PREFIX": queue_prefix,
        "FRONTDESK_DATABASE_URL": pg_database,
        "FRONTDESK_MAX_NEW_TOKENS": "16",
        "FRONTDESK_TEMPERATURE": "0",
    }


def frontdesk(*args: str) -> list[str]:
    return [sys.executable, "-m", "frontdesk.cli", *args]


def test_shell_through_redis_to_a_separate_worker(
    scaled_env: dict[str, str], tmp_path: Path
) -> None:
    upgrade = subprocess.run(
        frontdesk("db", "upgrade"), env=scaled_env, capture_output=True, timeout=60
    )
    assert upgrade.returncode == 0, upgrade.stderr.decode()

    # The message goes in while no worker runs: the turn waits in the stream.
    shell = subprocess.Popen(
        frontdesk("shell"),
        env=scaled_env,
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert shell.stdin is not None
    shell.stdin.write(b"Hello! Say something nice.\n")
    shell.stdin.close()
    time.sleep(1.5)
    assert shell.poll() is None  # still waiting for its reply

    worker = subprocess.Popen(
        frontdesk("worker"), env=scaled_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        shell.wait(timeout=90)  # replies are short: the pipes never fill
        assert shell.stdout is not None and shell.stderr is not None
        out, err = shell.stdout.read(), shell.stderr.read()
        assert shell.returncode == 0, err.decode()
        assert out.decode().strip(), "no reply reached the shell"
        assert b"Traceback" not in err
    finally:
        worker.send_signal(signal.SIGTERM)
        _wout, werr = worker.communicate(timeout=30)
    assert worker.returncode == 0, werr.decode()  # a clean stop on SIGTERM
    assert b"Traceback" not in werr

    listed = subprocess.run(
        frontdesk("conversations", "list", "--json", "--limit", "200"),
        env=scaled_env,
        capture_output=True,
        timeout=60,
    )
    assert listed.returncode == 0
    assert out.decode().strip()[:40] in listed.stdout.decode()
