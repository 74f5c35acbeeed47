"""frontdesk is typed for the people who build on it: from a folder of their own, a channel and a
backend written against ``frontdesk.bots.Channel`` and ``frontdesk.engine.backends.Backend``
pass ``mypy --strict``, and frontdesk's names are real types there (a wrong one is caught), not
``Any``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

USER_CODE = """
from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence

from frontdesk.bots import Channel, Gateway, ReplyStream
from frontdesk.engine.backends import Backend, Chunk, GenerationParams, Prompt, Usage
from frontdesk.storage import Store
from frontdesk.wire import ChatMessage


class EchoChannel:
    name = "echo"

    async def start(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def stop(self) -> None:
        pass

    async def deliver(self, reply: ReplyStream) -> None:
        async for delta in reply:
            print(delta.text, end="")


class ParrotBackend:
    name = "parrot"
    model = "parrot-1"

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def render(self, messages: Sequence[ChatMessage]) -> Prompt:
        return Prompt(text=messages[-1].content, n_tokens=len(messages))

    async def stream(self, prompt: Prompt, params: GenerationParams) -> AsyncGenerator[Chunk, None]:
        yield Chunk(prompt.text)
        yield Chunk("", Usage(prompt.n_tokens, 1, "stop"))

    async def cancel(self, request_id: str) -> None:
        pass


channel: Channel = EchoChannel()
backend: Backend = ParrotBackend()


async def count(store: Store) -> int:
    return len(await store.list_conversations(limit=10))
"""


def mypy(folder: Path, *files: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(folder / ".cache"), *files],
        cwd=folder,  # not the repository: frontdesk is found where it is installed
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_users_channel_and_backend_pass_mypy_strict_and_a_wrong_type_is_caught(
    tmp_path: Path,
) -> None:
    (tmp_path / "mybot.py").write_text(USER_CODE)
    (tmp_path / "wrong.py").write_text("from frontdesk.storage import Store\n\nstore: Store = 3\n")
    good = mypy(tmp_path, "mybot.py")
    assert good.returncode == 0, good.stdout + good.stderr
    bad = mypy(tmp_path, "wrong.py")
    assert bad.returncode == 1
    assert 'Incompatible types in assignment (expression has type "int"' in bad.stdout
    assert 'variable has type "Store"' in bad.stdout
