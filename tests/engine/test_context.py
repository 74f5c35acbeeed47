"""Prompt building: the newest history that fits the token budget, counted with the real tokenizer."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frontdesk.engine.backends import Backend, Prompt
from frontdesk.engine.backends.fixed import FixedReplyBackend
from frontdesk.engine.backends.llamacpp import LlamaCppBackend
from frontdesk.engine.context import ANCHOR_EVERY, Cuts, build_prompt
from frontdesk.errors import PromptTooLong
from frontdesk.wire import AGENT_SAID, ChatMessage, as_chat

SYSTEM = "You are a test assistant. Keep this sentence."


def conversation(turns: int) -> list[ChatMessage]:
    history: list[ChatMessage] = []
    for i in range(turns):
        history.append(ChatMessage("user", f"Question number {i}: what is {i} plus {i}?"))
        history.append(ChatMessage("assistant", f"Answer number {i}: it is {2 * i}."))
    history.append(ChatMessage("user", "Last question: what did I ask first?"))
    return history


def test_a_stored_message_becomes_the_model_s_a_person_s_marked_as_a_person_s() -> None:
    """(``Store.turn_context`` gives a turn's history so: tests/storage/test_desk.py.)"""
    assert as_chat("user", "Where is my parcel?") == ChatMessage("user", "Where is my parcel?")
    assert as_chat("assistant", "Let me check.") == ChatMessage("assistant", "Let me check.")
    assert as_chat("agent", "It ships today.") == ChatMessage(
        "assistant", f"{AGENT_SAID} It ships today."
    )
    with pytest.raises(ValueError, match="unknown role 'bot'"):
        as_chat("bot", "?")


async def test_budget_drops_oldest_turns_first_and_never_the_system_prompt(
    llama: LlamaCppBackend,
) -> None:
    history = conversation(20)
    everything = llama.render([ChatMessage("system", SYSTEM), *history]).n_tokens
    budget = everything // 2
    built = build_prompt(llama, SYSTEM, history, budget)

    assert built.prompt.n_tokens <= budget  # exact count, with the model's own tokenizer
    assert 0 < built.dropped < len(history)
    assert SYSTEM in built.prompt.text
    kept = history[built.dropped :]
    for message in kept:
        assert message.content in built.prompt.text
    for message in history[: built.dropped]:
        assert message.content not in built.prompt.text  # the oldest went
    assert kept[0].role == "user"
    # dropped in a block: at least one turn more than the least it had to drop, so keeping one
    # more turn would still have fitted
    wider = llama.render([ChatMessage("system", SYSTEM), *history[built.dropped - 2 :]])
    assert wider.n_tokens <= budget


async def test_prompts_keep_a_stable_token_prefix_over_a_long_conversation(
    llama: LlamaCppBackend,
) -> None:
    """30 turns with a budget that holds about 8 of them: each turn's prompt is, token for
    token, the previous prompt plus the previous reply and the new question, except on the few
    turns where a block of old history goes. A window sliding a turn at a time would break the
    prefix on every turn once full."""
    history = conversation(30)
    system = [ChatMessage("system", SYSTEM)]
    budget = llama.render([*system, *history[-17:]]).n_tokens
    prompts = [
        build_prompt(llama, SYSTEM, history[: 2 * k + 1], budget) for k in range(len(history) // 2)
    ]
    breaks = 0
    for before, after in itertools.pairwise(prompts):
        assert before.prompt.tokens is not None and after.prompt.tokens is not None
        assert after.prompt.n_tokens <= budget
        if after.dropped == before.dropped:
            assert after.prompt.tokens[: len(before.prompt.tokens)] == before.prompt.tokens
        else:
            assert after.dropped > before.dropped  # cuts only move forward
            breaks += 1
    assert 0 < breaks <= 6
    # the naive window: keep the longest suffix that fits, so the start moves every turn
    naive_starts = []
    for k in range(len(history) // 2):
        turn = history[: 2 * k + 1]
        start = next(
            s
            for s in range(0, len(turn), 2)
            if llama.render([*system, *turn[s:]]).n_tokens <= budget
        )
        naive_starts.append(start)
    naive_breaks = sum(b != a for a, b in itertools.pairwise(naive_starts))
    assert naive_breaks >= 2 * breaks


async def test_rendered_prompt_uses_the_models_chat_template(llama: LlamaCppBackend) -> None:
    built = build_prompt(llama, SYSTEM, [ChatMessage("user", "Hi")], 500)
    assert built.prompt.text.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>system\n" + SYSTEM in built.prompt.text
    assert built.prompt.tokens is not None and len(built.prompt.tokens) == built.prompt.n_tokens


async def test_a_message_too_long_for_the_budget_is_refused(llama: LlamaCppBackend) -> None:
    with pytest.raises(PromptTooLong):
        build_prompt(llama, SYSTEM, [ChatMessage("user", "word " * 400)], 100)


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=1, max_value=30), min_size=1, max_size=25),
    budget=st.integers(min_value=5, max_value=400),
)
def test_kept_history_fits_and_its_cuts_never_move(lengths: list[int], budget: int) -> None:
    backend = FixedReplyBackend("x")
    history = [
        ChatMessage("user" if i % 2 == 0 else "assistant", " ".join(["w"] * n))
        for i, n in enumerate(lengths)
    ]
    if len(history) % 2 == 0:
        history.append(ChatMessage("user", "last"))
    system = [ChatMessage("system", "sys")]
    if backend.render([*system, history[-1]]).n_tokens > budget:
        with pytest.raises(PromptTooLong):
            build_prompt(backend, "sys", history, budget)
        return
    built = build_prompt(backend, "sys", history, budget)
    kept = history[built.dropped :]
    assert built.prompt == backend.render([*system, *kept])
    assert built.prompt.n_tokens <= budget
    assert kept[-1] == history[-1] and kept[0].role == "user"
    # Every earlier turn (a prefix of this history) cut at or before this cut; where it cut at
    # the same place, its prompt is a prefix of this one
    for end in range(1, len(history), 2):
        if backend.render([*system, history[end - 1]]).n_tokens > budget:
            continue
        earlier = build_prompt(backend, "sys", history[:end], budget)
        assert earlier.dropped <= built.dropped
        if earlier.dropped == built.dropped:
            assert built.prompt.text.startswith(earlier.prompt.text.removesuffix("<assistant>\n"))


class CountingRenders:
    """A backend's ``render`` that counts its calls."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.renders = 0

    def render(self, messages: Sequence[ChatMessage]) -> Prompt:
        self.renders += 1
        return self.backend.render(messages)


def rule(
    backend: Backend, system: str, history: list[ChatMessage], budget: int, offset: int
) -> int:
    """Where ``build_prompt``'s rule starts the kept history, computed the plain way: from the
    anchor, the first user message from which the whole fits; where it does not, half of the
    most messages that fit from there (at least two) go. PromptTooLong when the last alone does
    not fit."""

    def tokens(start: int, end: int) -> int:
        return backend.render([ChatMessage("system", system), *history[start:end]]).n_tokens

    last = len(history) - 1
    if tokens(last, last + 1) > budget:
        raise PromptTooLong("the last message alone")
    start = min(-offset % ANCHOR_EVERY if offset else 0, last)
    while True:
        while start < last and history[start].role != "user":
            start += 1
        if tokens(start, last + 1) <= budget:
            return start
        fits = max(m for m in range(last - start + 1) if tokens(start, start + m) <= budget)
        start = min(last, start + max(2, fits // 2))


async def test_a_prompt_that_fits_is_rendered_once(llama: LlamaCppBackend) -> None:
    """Rendering costs: about 3 ms for a 1,000-token prompt with llama.cpp's template and
    tokenizer here. A prompt that fits is rendered once, not once more for its last message."""
    counting = CountingRenders(llama)
    built = build_prompt(counting, SYSTEM, conversation(10), 2000)  # type: ignore[arg-type]
    assert built.dropped == 0
    assert counting.renders == 1


async def test_a_long_conversations_turns_reuse_its_cuts_and_render_about_once(
    llama: LlamaCppBackend,
) -> None:
    """60 turns of a conversation about eight turns long in the budget, answered by one worker
    (one ``cuts``): every turn's prompt is the one built without the cuts, a turn renders it
    once unless a new cut is due, and all turns together render it a small fraction of the
    times that searching every turn afresh does."""
    history = conversation(60)
    budget = llama.render([ChatMessage("system", SYSTEM), *history[-17:]]).n_tokens
    cuts: dict[int, tuple[int, bytes]] = {}
    with_cuts, fresh = CountingRenders(llama), CountingRenders(llama)
    each = []
    for k in range(20, 61):
        asked = history[: 2 * k + 1]
        before = with_cuts.renders
        built = build_prompt(with_cuts, SYSTEM, asked, budget, cuts=cuts)  # type: ignore[arg-type]
        each.append(with_cuts.renders - before)
        assert built == build_prompt(fresh, SYSTEM, asked, budget)  # type: ignore[arg-type]
    assert each[0] > 5  # the first turn searched its cuts
    assert sorted(each)[len(each) // 2] == 1  # most turns: the prompt alone
    assert sum(each) * 4 < fresh.renders


@settings(max_examples=100, deadline=None)
@given(
    count=st.integers(min_value=3, max_value=160),
    longest=st.integers(min_value=1, max_value=30),
    seed=st.integers(min_value=0, max_value=2**32),
    budget=st.integers(min_value=5, max_value=300),
    read=st.integers(min_value=3, max_value=160),
    edits=st.lists(st.tuples(st.integers(0, 80), st.floats(0, 1), st.integers(1, 30)), max_size=6),
)
def test_prompts_built_with_remembered_cuts_are_those_the_rule_gives(
    count: int,
    longest: int,
    seed: int,
    budget: int,
    read: int,
    edits: list[tuple[int, float, int]],
) -> None:
    """Turn after turn of one conversation through one ``cuts``, each reading only its newest
    ``read`` messages (counted from their stored position, as a worker does), while now and then
    an earlier message changes (its remembered cut must not be taken then): every prompt starts
    where the plain rule says, and is the one built without remembered cuts."""
    backend = FixedReplyBackend("x")
    lengths = random.Random(seed).choices(range(1, longest + 1), k=count)
    history = [
        ChatMessage("user" if i % 2 == 0 else "assistant", " ".join(["w"] * n))
        for i, n in enumerate(lengths)
    ]
    cuts: dict[int, tuple[int, bytes]] = {}
    for turn, end in enumerate(range(1, len(history) + 1, 2)):
        for _turn, where, words in (edit for edit in edits if edit[0] == turn):
            changed = int(where * (end - 1))  # a message before this turn's is not what it was
            history[changed] = ChatMessage(history[changed].role, "v " * words)
        offset = max(0, end - read)
        asked = history[offset:end]
        try:
            expected = rule(backend, "sys", asked, budget, offset)
        except PromptTooLong:
            with pytest.raises(PromptTooLong):
                build_prompt(backend, "sys", asked, budget, offset=offset, cuts=cuts)
            continue
        built = build_prompt(backend, "sys", asked, budget, offset=offset, cuts=cuts)
        assert built.dropped == expected
        assert built == build_prompt(backend, "sys", asked, budget, offset=offset)
        assert built.prompt.n_tokens <= budget


def test_a_worker_keeps_the_cuts_of_the_1024_conversations_it_answered_last() -> None:
    """The README's bound: the conversations answered last keep their cuts (the same record
    turn after turn); the one answered longest ago gives its cuts up to the 1,025th."""
    cuts = Cuts()
    for conversation in range(1, 1025):
        cuts.of(conversation)[0] = (5, b"digest")
    first = cuts.of(1)  # answered again: now the newest
    assert first == {0: (5, b"digest")}
    cuts.of(1025)  # conversation 2, answered longest ago, goes
    assert cuts.of(1) is first
    assert cuts.of(3) == {0: (5, b"digest")}
    assert cuts.of(2) == {}
