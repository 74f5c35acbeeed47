"""Builds a turn's prompt from stored history within a token budget.

The prompt is the system prompt plus the newest messages that fit, counted exactly: the backend
renders each candidate with the model's chat template and tokenizer. The oldest messages go first,
in blocks, so that prompts keep a stable prefix from turn to turn; the system prompt and the
message being answered never go. Kept history starts on a user message, so a template never sees
a reply without its question.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from frontdesk.errors import PromptTooLong
from frontdesk.wire import ChatMessage

from .backends import Backend, Prompt


@dataclass(frozen=True, slots=True)
class BuiltPrompt:
    prompt: Prompt
    kept: int  # how many history messages made it in
    dropped: int


ANCHOR_EVERY = 64  # messages: a long conversation's cuts are counted from these positions
AGENT_SAID = "(A person from our team answered here:)"


def as_chat(role: str, content: str) -> ChatMessage:
    """A stored message as the model sees it. What a person from the team wrote to the customer
    during a handoff (role ``agent``) is an answer of the assistant's side, marked as a
    person's: so after the handoff the model knows that a person answered, and what they said."""
    if role == "agent":
        return ChatMessage("assistant", f"{AGENT_SAID} {content}")
    if role in ("user", "assistant", "system"):
        return ChatMessage(role, content)  # type: ignore[arg-type]
    raise ValueError(f"a stored message of unknown role {role!r}")


def build_prompt(
    backend: Backend,
    system_prompt: str,
    history: Sequence[ChatMessage],
    budget: int,
    *,
    offset: int = 0,
) -> BuiltPrompt:
    """The system prompt and the newest part of ``history`` (oldest first, ending with the
    message to answer) that fits ``budget`` tokens, cut where earlier turns were cut.

    When everything fits, nothing is dropped, and each turn's prompt extends the one before it,
    token for token. When it does not, history is dropped a block at a time: from the current
    start, half of what would fit there goes. Cut points depend only on the stored messages,
    which never change, so every turn (on any worker) cuts at the same places, and the prompt's
    prefix stays the same for many turns: an engine's prefix cache keeps hitting, where a window
    sliding one turn at a time would shift the prompt, and miss, on every turn. Kept history
    starts on a user message. Raises PromptTooLong if the last message alone does not fit.

    ``history`` may be the newest part of a longer conversation, whose first message is the
    conversation's message number ``offset``. Cuts are then counted from the first message whose
    number is a multiple of ``ANCHOR_EVERY``, so they stay where they are while the part read
    moves along with the conversation (a cut counted from the start of what was read would move
    on every turn). ``BuiltPrompt.dropped`` then counts from the start of ``history``."""
    if not history:
        raise ValueError("nothing to answer: history is empty")
    system = [ChatMessage("system", system_prompt)] if system_prompt else []
    last = len(history) - 1

    def render(start: int, end: int = len(history)) -> Prompt:
        return backend.render([*system, *history[start:end]])

    smallest = render(last)
    if smallest.n_tokens > budget:
        raise PromptTooLong(
            f"the message needs {smallest.n_tokens} tokens with the system prompt; "
            f"the budget is {budget}"
        )
    start = -offset % ANCHOR_EVERY if offset else 0
    start = min(start, last)
    while True:
        while start < last and history[start].role != "user":
            start += 1
        prompt = smallest if start == last else render(start)
        if prompt.n_tokens <= budget:
            return BuiltPrompt(prompt=prompt, kept=len(history) - start, dropped=start)
        # Too long from here: drop the oldest half of what fits from here. What fits is
        # decided by messages that are all stored already, so this cut never moves.
        fits = _fitting(render, start, last, budget)
        start = min(last, start + max(2, fits // 2))


def _fitting(render: Callable[[int, int], Prompt], start: int, last: int, budget: int) -> int:
    """How many messages from ``start`` fit the budget (fewer than all up to ``last``)."""
    lo, hi = 0, last - start
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if render(start, start + mid).n_tokens <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo
