"""Prompt building: the newest history that fits the token budget, counted with the real tokenizer."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frontdesk.engine.backends.fixed import FixedReplyBackend
from frontdesk.engine.backends.llamacpp import LlamaCppBackend
from frontdesk.engine.context import build_prompt
from frontdesk.errors import PromptTooLong
from frontdesk.wire import ChatMessage

SYSTEM = "You are a test assistant. Keep this sentence."


def conversation(turns: int) -> list[ChatMessage]:
    history: list[ChatMessage] = []
    for i in range(turns):
        history.append(ChatMessage("user", f"Question number {i}: what is {i} plus {i}?"))
        history.append(ChatMessage("assistant", f"Answer number {i}: it is {2 * i}."))
    history.append(ChatMessage("user", "Last question: what did I ask first?"))
    return history


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
