"""The console channel: a chat on the terminal, for `frontdesk shell`.

It reads lines from standard input (a terminal or a pipe) and streams each reply onto standard
output as it is generated, then reads the next line. ``/quit`` or end of input leaves. Everything
else, /reset included, goes to the gateway like a message from any platform.
"""

from __future__ import annotations

import asyncio
import getpass
import re
import sys
import uuid
from typing import TYPE_CHECKING, TextIO

from frontdesk import texts
from frontdesk.wire import InboundMessage

from .channel import ReplyStream

if TYPE_CHECKING:
    from .gateway import Gateway

QUIT = ("/quit", "/exit")


class ConsoleChannel:
    name = "console"

    def __init__(
        self,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
        *,
        user: str | None = None,
        prompt: str | None = None,
    ) -> None:
        self._in = stdin or sys.stdin
        self._out = stdout or sys.stdout
        self.user = user or getpass.getuser()
        # Show a prompt only to a person at a terminal; a pipe gets replies alone.
        self._prompt = prompt if prompt is not None else ("you> " if self._in.isatty() else "")
        self._gateway: Gateway | None = None

    @property
    def identity(self) -> str:
        """Part of the gateway id: a restarted shell of the same user resumes its reply."""
        return f"{self.name}-{self.user}"

    async def start(self, gateway: Gateway) -> None:
        self._gateway = gateway
        if hasattr(self._in, "reconfigure"):
            # Undecodable bytes become lone surrogates, which the gateway then cleans.
            self._in.reconfigure(errors="surrogateescape")

    async def stop(self) -> None:
        pass

    async def run(self) -> None:
        """Chat until /quit or end of input, one message at a time."""
        assert self._gateway is not None, "start() the channel first"
        while True:
            if self._prompt:
                self._write(self._prompt)
            line = await asyncio.to_thread(self._in.readline)
            if not line:
                break
            text = line.rstrip("\r\n")
            if text.strip().lower() in QUIT:
                break
            msg = InboundMessage(
                platform=self.name,
                chat_id=self.user,
                user_id=self.user,
                user_name=self.user,
                message_id=uuid.uuid4().hex,
                text=text,
            )
            delivery = await self._gateway.handle(msg, self)
            if delivery is not None:
                await delivery

    async def deliver(self, reply: ReplyStream) -> None:
        if reply.resumed:  # what an earlier process printed cannot be taken back: say so
            self._write(f"\n{texts.RESUMING}\n")
        async for delta in reply:
            if delta.restart:  # what was printed cannot be taken back: say it starts over
                self._write(f"\n{texts.ANSWERING_AGAIN}\n")
            if delta.text:
                self._write(plain_links(delta.text))
            if delta.error:
                self._write(("\n" if delta.text else "") + delta.error)
        self._write("\n")

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()


_LINK = re.compile(r"\[([^\]\n]+)\]\((https?://[^)\s]+)\)")


def plain_links(text: str) -> str:
    """Markdown links (a reply's sources) as plain text for a terminal: ``title (url)``."""
    return _LINK.sub(r"\1 (\2)", text)
