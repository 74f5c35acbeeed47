"""Every metric frontdesk exports, defined once (prometheus-client, its default registry). Each
part counts its own through these names; ``frontdesk.ops`` serves them on ``/metrics`` with
the in-process vLLM engine's own (``vllm:…``, registered in the same registry).

Labels are bounded: a platform, an outcome, an API method, a reason. Never a user, a chat or a
conversation: those would grow without end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from frontdesk.engine.queue.admin import QueueStatus
    from frontdesk.wire import Turn

# Seconds, from a user's message to the reply's first text and to its end: a turn waits out
# FRONTDESK_BURST_MS (1.5 s by default) before it starts, so the buckets reach well past that
_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0, 120.0)

# -- gateways ----------------------------------------------------------------------------------
MESSAGES = Counter(
    "frontdesk_messages", "Users' messages a gateway stored (each once: retries and duplicates "
    "are not counted)", ["platform"],
)  # fmt: skip
REFUSED = Counter(
    "frontdesk_messages_refused",
    "Messages admission control refused: over the user's rate, the backlog full, the user's "
    "daily tokens spent",
    ["platform", "reason"],
)
PLATFORM_CALLS = Counter(
    "frontdesk_platform_calls", "Calls made to a platform's API, by method", ["platform", "method"]
)
PLATFORM_LIMITED = Counter(
    "frontdesk_platform_rate_limited",
    "Platform API calls answered 429 (rate limited), by method; each is waited out and tried again",
    ["platform", "method"],
)
HANDOFFS = Counter(
    "frontdesk_handoffs", "Conversations handed to a person, by why", ["platform", "reason"]
)
FEEDBACK = Counter("frontdesk_feedback", "Ratings users gave answers", ["platform", "rating"])

# -- workers -----------------------------------------------------------------------------------
TURNS = Counter(
    "frontdesk_turns",
    "Turns a worker settled, by outcome: answered, not_covered (nothing in the knowledge base "
    "fits), failed, empty, stopped (by the user), joined (a later message answers it), resent "
    "(a redelivered turn whose reply was stored), gave_up (delivered too often)",
    ["platform", "outcome"],
)
IN_FLIGHT = Gauge("frontdesk_turns_in_flight", "Turns a worker is answering now")
FIRST_TOKEN = Histogram(
    "frontdesk_time_to_first_token_seconds",
    "From the user's message queued to the reply's first text",
    ["platform"],
    buckets=_SECONDS,
)
TURN_SECONDS = Histogram(
    "frontdesk_turn_seconds",
    "From the user's message queued to the whole reply stored",
    ["platform"],
    buckets=_SECONDS,
)
TOKENS = Counter("frontdesk_tokens", "Tokens of prompts (in) and replies (out)", ["direction"])
RECLAIMED = Counter(
    "frontdesk_turns_reclaimed",
    "Turns read again after an earlier delivery: their worker died, stalled or stopped "
    "mid-turn, or handed them back to wait (storage down, an earlier message first)",
)
SWEPT = Counter(
    "frontdesk_messages_swept", "Stored messages the sweep queued again (never queued, or lost)"
)
ENGINE_DEATHS = Counter("frontdesk_engine_deaths", "Times a worker's engine died")
KB_RETRIEVALS = Counter(
    "frontdesk_kb_retrievals",
    "Knowledge-base searches for a turn: hit (passages given), miss (nothing fits)",
    ["result"],
)

# -- the queue (read from Redis at each scrape, by every process that serves /metrics) ---------
QUEUE_LENGTH = Gauge("frontdesk_queue_length", "Entries in the turns stream")
QUEUE_LAG = Gauge("frontdesk_queue_lag", "Turns queued that no worker has read yet")
QUEUE_PENDING = Gauge("frontdesk_queue_pending", "Turns read by a worker and not yet acked")
QUEUE_DEAD = Gauge("frontdesk_queue_dead_letters", "Turns in the dead-letter stream")
READY = Gauge(
    "frontdesk_ready",
    "1 while everything this process needs answers (what /readyz says), else 0",
)


def platform_of(turn: Turn) -> str:
    """The platform a turn's message came from: its route's, else its author's; a console's
    turns carry neither."""
    platform = (turn.route or {}).get("platform")
    if isinstance(platform, str) and platform:
        return platform
    if turn.user:
        return turn.user.partition(":")[0]
    return "console"


def observe_queue(status: QueueStatus) -> None:
    QUEUE_LENGTH.set(status.length)
    if status.lag is not None:  # None: Redis cannot tell (the gauge keeps its last value)
        QUEUE_LAG.set(status.lag)
    QUEUE_PENDING.set(status.pending)
    QUEUE_DEAD.set(status.dead)
