"""The backend protocol every inference engine implements, and the registry that builds one by name.

A backend owns everything model-specific: the chat template, the tokenizer, stop tokens and sampling
arguments. The worker hands it chat messages to ``render`` and a ``Prompt`` to ``stream``, and never
learns which engine it talks to. Adding an engine is one module here and one line in ``_REGISTRY``.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from frontdesk.errors import ConfigError
from frontdesk.wire import ChatMessage

if TYPE_CHECKING:
    from frontdesk.settings import Settings


@dataclass(frozen=True, slots=True)
class Prompt:
    """A rendered prompt: its text and, when the backend tokenizes locally, its exact tokens."""

    text: str
    n_tokens: int
    tokens: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class GenerationParams:
    request_id: str
    max_tokens: int
    temperature: float = 0.7


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Chunk:
    """A text delta; the last chunk of a stream carries ``usage``."""

    text: str
    usage: Usage | None = None


class Backend(Protocol):
    """An inference engine. A backend that batches requests may also set ``max_in_flight``: how
    many turns a worker should keep in flight for it when ``FRONTDESK_WORKER_CONCURRENCY`` is
    unset (the worker reads it with a default of 8)."""

    name: str
    model: str

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def render(self, messages: Sequence[ChatMessage]) -> Prompt: ...
    def stream(self, prompt: Prompt, params: GenerationParams) -> AsyncGenerator[Chunk, None]: ...
    async def cancel(self, request_id: str) -> None: ...


_REGISTRY = {
    "llamacpp": "frontdesk.engine.backends.llamacpp:LlamaCppBackend",
    "fixed": "frontdesk.engine.backends.fixed:FixedReplyBackend",
    "openai": "frontdesk.engine.backends.openai:OpenAIBackend",
    "vllm": "frontdesk.engine.backends.vllm:VLLMBackend",
}


def create_backend(settings: Settings) -> Backend:
    """Build (not start) the backend named by ``settings.engine``."""
    target = _REGISTRY.get(settings.engine)
    if target is None:
        raise ConfigError(
            f"unknown FRONTDESK_ENGINE {settings.engine!r}; choose one of {', '.join(_REGISTRY)}"
        )
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    backend: Backend = cls.from_settings(settings)
    return backend
