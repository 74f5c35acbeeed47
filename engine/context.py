"""Builds a turn's prompt from stored history within a token budget.

The prompt is the system prompt plus the newest messages that fit, counted exactly: the backend
renders each candidate with the model's chat template and tokenizer. The oldest messages go first;
the system prompt and the message being answered never go. Kept history starts on a user message,
so a template never sees a reply without its question.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from frontdesk.errors import PromptTooLong
from frontdesk.wire import ChatMessage

from .backends import Backend, Prompt


@dataclass(frozen=True, slots=True)
class BuiltPrompt:
    prompt: Prompt
    kept: int  # how many history messages made it in
    dropped: int


def build_prompt(
    backend: Backend, system_prompt: str, history: Sequence[ChatMessage], budget: int
) -> BuiltPrompt:
    """The largest suffix of ``history`` (oldest first, ending with the message to answer) that
    fits ``budget`` tokens behind the system prompt. Raises PromptTooLong if the last message alone
    does not fit."""
    if not history:
        raise ValueError("nothing to answer: history is empty")
    system = [ChatMessage("system", system_prompt)] if system_prompt else []

    def render(keep: int) -> Prompt:
        return backend.render([*system, *history[len(history) - keep :]])

    smallest = render(1)
    if smallest.n_tokens > budget:
        raise PromptTooLong(
            f"the message needs {smallest.n_tokens} tokens with the system prompt; "
            f"the budget is {budget}"
        )
    if len(history) > 1:
        everything = render(len(history))
        if everything.n_tokens <= budget:  # the common case: one render, nothing dropped
            return BuiltPrompt(prompt=everything, kept=len(history), dropped=0)
    # Token count grows with every message kept: binary search the largest suffix that fits.
    lo, hi, best = 1, len(history), smallest
    while lo < hi:
        mid = (lo + hi + 1) // 2
        candidate = render(mid)
        if candidate.n_tokens <= budget:
            lo, best = mid, candidate
        else:
            hi = mid - 1
    keep = lo
    while keep > 1 and history[len(history) - keep].role != "user":
        keep -= 1
    if keep != lo:
        best = render(keep)
    return BuiltPrompt(prompt=best, kept=keep, dropped=len(history) - keep)
