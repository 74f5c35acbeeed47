"""Prompt building: the newest history that fits the token budget, counted with the real tokenizer."""

from __future__ import annotations

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
    # and it kept as much as fits: one more turn would not
    wider = llama.render([ChatMessage("system", SYSTEM), *history[built.dropped - 2 :]])
    assert wider.n_tokens > budget


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
def test_kept_history_is_the_longest_fitting_suffix(lengths: list[int], budget: int) -> None:
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
    if built.dropped:
        # one more message (back to the previous user message) would have broken the budget
        assert backend.render([*system, *history[built.dropped - 2 :]]).n_tokens > budget
