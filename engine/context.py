"""Builds a turn's prompt from stored history within a token budget.

The prompt is the system prompt plus the newest messages that fit, counted exactly: the backend
renders each candidate with the model's chat template and tokenizer. The oldest messages go first,
in blocks, so that prompts keep a stable prefix from turn to turn; the system prompt and the
message being answered never go. Kept history starts on a user message, so a template never sees
a reply without its question.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, MutableMapping, Sequence
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
KEEP_CUTS = 64  # cuts kept a conversation before those behind its anchor go


def build_prompt(
    backend: Backend,
    system_prompt: str,
    history: Sequence[ChatMessage],
    budget: int,
    *,
    offset: int = 0,
    cuts: MutableMapping[int, tuple[int, bytes]] | None = None,
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
    on every turn). ``BuiltPrompt.dropped`` then counts from the start of ``history``.

    ``cuts``: what earlier turns of the same conversation found (``Cuts.of``), read and added
    to. A later turn skips the cuts found before without rendering anything for them, and
    renders its prompt about once, where without them every turn of a conversation past the
    budget searches its cuts again (dozens of renders). The prompt is the same either way."""
    if not history:
        raise ValueError("nothing to answer: history is empty")
    system = [ChatMessage("system", system_prompt)] if system_prompt else []
    last = len(history) - 1

    def render(start: int, end: int = len(history)) -> Prompt:
        return backend.render([*system, *history[start:end]])

    def alone() -> Prompt:
        """The message to answer after the system prompt alone; PromptTooLong when even that
        is over the budget."""
        prompt = render(last)
        if prompt.n_tokens > budget:
            raise PromptTooLong(
                f"the message needs {prompt.n_tokens} tokens with the system prompt; "
                f"the budget is {budget}"
            )
        return prompt

    start = -offset % ANCHOR_EVERY if offset else 0
    start = min(start, last)
    if cuts is not None and len(cuts) > KEEP_CUTS:  # those before the anchor are no use now
        for position in [p for p in cuts if p < offset + start]:
            del cuts[position]
    known = 0  # how many messages from ``start`` are known to fit (the last one aside)
    guess = 0  # how many probably do: as many as fitted from the start before (0: unknown)
    checked = False  # whether the last message is known to fit after the system prompt
    while True:
        while start < last and history[start].role != "user":
            start += 1
            known = max(0, known - 1)
        if start == last:
            return BuiltPrompt(prompt=alone(), kept=1, dropped=last)
        fits = _remembered(cuts, offset + start, history, start, last, system_prompt, budget)
        if fits is None:
            # The whole from here first when that is a small render (so a prompt that fits is
            # rendered once); a long stretch is searched first, and when what fits from here ends
            # before the last message, the whole is too long without rendering it
            whole = None
            if not guess or last - start <= 2 * guess:
                whole = render(start)
                if whole.n_tokens <= budget:
                    return BuiltPrompt(prompt=whole, kept=len(history) - start, dropped=start)
                guess = guess or (last - start) * budget // max(1, whole.n_tokens)
            if not checked:
                alone()
                checked = True
            fits = _fitting(render, start, last, budget, known, guess)
            if fits < last - start:  # decided by stored messages alone: so on every later turn
                if cuts is not None:
                    cuts[offset + start] = (
                        fits,
                        _digest(history, start, fits, system_prompt, budget),
                    )
            elif whole is None:  # all but the last message fit: the whole decides
                whole = render(start)
                if whole.n_tokens <= budget:
                    return BuiltPrompt(prompt=whole, kept=len(history) - start, dropped=start)
        # Too long from here: drop the oldest half of what fits from here. What fits is
        # decided by messages that are all stored already, so this cut never moves.
        step = max(2, fits // 2)
        known = max(0, fits - step)  # what fitted from the old start, from the new one
        guess = fits
        start = min(last, start + step)


def _fitting(
    render: Callable[[int, int], Prompt], start: int, last: int, budget: int, known: int, guess: int
) -> int:
    """How many messages from ``start`` fit the budget (fewer than all up to ``last``), given
    that ``known`` of them do. ``guess`` is tried first (messages of a conversation run to
    similar lengths, so it is often right or near), then from there in doubling steps up or
    down, then halving to the exact number: a few renders, none much longer than the budget."""

    def fit(count: int) -> bool:
        return render(start, start + count).n_tokens <= budget

    lo, hi = known, last - start  # ``lo`` messages fit; more than ``hi`` are not asked about
    if lo < hi:
        probe, step = min(max(guess, lo + 1), hi), 1
        if fit(probe):
            lo = probe
            while lo < hi:
                probe = min(lo + step, hi)
                if not fit(probe):
                    hi = probe - 1
                    break
                lo, step = probe, step * 2
        else:
            hi = probe - 1
            while lo < hi:
                probe = max(lo + 1, hi - step + 1)
                if fit(probe):
                    lo = probe
                    break
                hi, step = probe - 1, step * 2
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fit(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _digest(
    history: Sequence[ChatMessage], start: int, fits: int, system_prompt: str, budget: int
) -> bytes:
    """What decides how many messages from ``start`` fit: those messages and the first that
    does not fit, the system prompt and the budget."""
    digest = hashlib.blake2b(
        f"{budget}:{len(system_prompt)}:{system_prompt}".encode(), digest_size=16
    )
    for message in history[start : start + fits + 1]:
        digest.update(
            f"{message.role}:{len(message.content)}:{message.content}".encode(
                "utf-8", "surrogatepass"
            )
        )
    return digest.digest()


def _remembered(
    cuts: MutableMapping[int, tuple[int, bytes]] | None,
    position: int,
    history: Sequence[ChatMessage],
    start: int,
    last: int,
    system_prompt: str,
    budget: int,
) -> int | None:
    """How many messages fit from ``start`` (the conversation's message ``position``), as an
    earlier turn found it, when the messages that decided it are still the same."""
    found = cuts.get(position) if cuts is not None else None
    if found is None:
        return None
    fits, digest = found
    if start + fits >= last or _digest(history, start, fits, system_prompt, budget) != digest:
        return None
    return fits


class Cuts:
    """The cuts a worker found in the conversations it answered, for their later turns (see
    ``build_prompt``): for each place where a conversation was too long, how many messages from
    there fit, with a digest of what decided it. A cut is taken again only while its digest
    matches, so a prompt built with them is the one built without them. Kept for the
    ``conversations`` answered last. Token counts are one backend's: a worker has one."""

    def __init__(self, conversations: int = 1024) -> None:
        self._max = conversations
        self._by_conversation: OrderedDict[int, dict[int, tuple[int, bytes]]] = OrderedDict()

    def of(self, conversation_id: int) -> dict[int, tuple[int, bytes]]:
        found = self._by_conversation.get(conversation_id)
        if found is not None:
            self._by_conversation.move_to_end(conversation_id)
            return found
        found = self._by_conversation[conversation_id] = {}
        if len(self._by_conversation) > self._max:
            self._by_conversation.popitem(last=False)
        return found
