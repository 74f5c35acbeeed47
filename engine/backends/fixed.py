"""``fixed``: a backend that answers every turn with the same text, instantly.

It is a real backend, not a mock: benchmarks use it to measure what the framework itself costs (queue,
worker, storage, delivery) with the model taken out, and tests use it to get a reply of an exact
length. Tokens are counted as whitespace-separated words.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence

from frontdesk.settings import Settings
from frontdesk.wire import ChatMessage

from . import Chunk, GenerationParams, Prompt, Usage

_PIECE = re.compile(r"\S+\s*|\s+")


class FixedReplyBackend:
    name = "fixed"

    def __init__(self, reply: str, *, words_per_chunk: int = 4) -> None:
        self.reply = reply
        self.model = "fixed-reply"
        self._words_per_chunk = words_per_chunk

    @classmethod
    def from_settings(cls, settings: Settings) -> FixedReplyBackend:
        return cls(settings.fixed_reply)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def render(self, messages: Sequence[ChatMessage]) -> Prompt:
        text = "".join(f"<{m.role}>\n{m.content}\n" for m in messages) + "<assistant>\n"
        return Prompt(text=text, n_tokens=len(text.split()))

    async def stream(self, prompt: Prompt, params: GenerationParams) -> AsyncIterator[Chunk]:
        pieces = _PIECE.findall(self.reply)[: params.max_tokens]
        step = self._words_per_chunk
        for start in range(0, len(pieces), step):
            yield Chunk("".join(pieces[start : start + step]))
        yield Chunk("", Usage(prompt.n_tokens, len(pieces), "stop"))

    async def cancel(self, request_id: str) -> None:
        pass
