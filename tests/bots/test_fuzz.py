"""Fuzzed platform input: Hypothesis-generated Telegram updates, Slack events and Slack
interactions, well-formed and malformed on purpose (unknown types, missing fields, wrong types,
huge texts, deep nesting), sent as the platforms send them (Telegram's webhook with its secret
token, Slack's signed posts) to one gateway running both channels. None may raise an unhandled
exception or get a 5xx, every signed Slack request is acked with 200, and the gateway answers the
next real message afterwards."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frontdesk.bots.slack import SlackChannel
from frontdesk.bots.slack.desk import CLAIM, RESOLVE, RESOLVE_THREAD
from frontdesk.bots.slack.reply import RATE_DOWN, RATE_UP
from frontdesk.bots.telegram import TelegramChannel
from frontdesk.engine.backends.fixed import FixedReplyBackend
from tests.fakes.slack_api import FakeSlack
from tests.fakes.telegram_api import FakeTelegram
from tests.support import Pipeline, free_port, pipeline

# at least 2,000 examples of each payload kind in CI (FRONTDESK_FUZZ_EXAMPLES to change)
EXAMPLES = int(os.environ.get("FRONTDESK_FUZZ_EXAMPLES", "2000"))
HOOK = "/telegram/hook"

# -- any JSON, and JSON broken on purpose ----------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63), st.text(max_size=40),
    st.floats(allow_nan=False, allow_infinity=False),
)  # fmt: skip
any_json = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                               max_size=4),
    max_leaves=30,
)  # fmt: skip
deep = st.integers(50, 400).map(lambda n: json.loads("[" * n + "]" * n))  # deep nesting
huge_text = st.sampled_from(["x" * 100_000, "é" * 40_000 + "🙂" * 5_000, "\x00\u202e" * 2_000])
texts = st.one_of(
    st.text(max_size=200), huge_text,
    st.sampled_from(["/start", "/help", "/human", "/bot", "/reset", "/stop", "human", "/resolve"]),
)  # fmt: skip


@st.composite
def broken(draw: st.DrawFn, payload: st.SearchStrategy[Any]) -> Any:
    """``payload`` with one field somewhere dropped, or given a value of another type."""
    value = json.loads(json.dumps(draw(payload)))  # a copy of its own to break
    node = value
    while isinstance(node, dict) and node:
        key = draw(st.sampled_from(sorted(node)))
        if not isinstance(node[key], dict) or draw(st.booleans()):
            if draw(st.booleans()):
                del node[key]
            else:
                node[key] = draw(any_json | deep)
            break
        node = node[key]
    return value


def mixed(payload: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[Any, bool]]:
    """(payload, whether it is well-formed): ``payload``'s, and malformed ones (one of them
    broken, or any JSON at all)."""
    return st.one_of(
        payload.map(lambda p: (p, True)),
        st.one_of(broken(payload), any_json, deep).map(lambda p: (p, False)),
    )


# -- Telegram updates ----------------------------------------------------------------------------

tg_users = st.fixed_dictionaries(
    {"id": st.integers(1, 2**40), "is_bot": st.booleans(), "first_name": st.text(max_size=30)},
    optional={"username": st.text(max_size=20), "language_code": st.sampled_from(["en", "de"])},
)  # fmt: skip
tg_chats = st.one_of(
    st.builds(lambda i: {"id": i, "type": "private", "first_name": "C"}, st.integers(1, 2**40)),
    st.builds(lambda i, kind, forum: {"id": -i, "type": kind, "title": "g", "is_forum": forum},
              st.integers(1, 2**40), st.sampled_from(["group", "supergroup", "channel"]),
              st.booleans()),
)  # fmt: skip
tg_entities = st.lists(
    st.fixed_dictionaries({
        "type": st.sampled_from(["bot_command", "mention", "bold", "text_link", "url", "spoiler"]),
        "offset": st.integers(-5, 300), "length": st.integers(-5, 300),
    }, optional={"url": st.text(max_size=30)}),
    max_size=4,
)  # fmt: skip
tg_messages = st.fixed_dictionaries(
    {"message_id": st.integers(1, 2**31), "date": st.integers(0, 2**31), "chat": tg_chats},
    optional={
        "from": tg_users, "text": texts, "entities": tg_entities, "caption": texts,
        "message_thread_id": st.integers(1, 2**31), "is_topic_message": st.booleans(),
        "photo": st.just([{"file_id": "f", "file_unique_id": "u", "width": 1, "height": 1}]),
        "sticker": st.just({"file_id": "f", "file_unique_id": "u", "type": "regular",
                            "width": 1, "height": 1, "is_animated": False,
                            "is_video": False}),
        "new_chat_members": st.lists(tg_users, max_size=2),
    },
)  # fmt: skip
tg_callbacks = st.fixed_dictionaries(
    {"id": st.text(min_size=1, max_size=20), "from": tg_users, "chat_instance": st.just("1")},
    optional={
        "data": st.one_of(st.text(max_size=64),
                          st.builds(lambda r, q: f"rate:{r}:{q}",
                                    st.sampled_from(["up", "down", "sideways"]),
                                    st.integers(-5, 2**40))),
        "message": tg_messages,
    },
)  # fmt: skip


@st.composite
def tg_updates(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from([
        "message", "edited_message", "channel_post", "callback_query", "my_chat_member",
        "message_reaction", "poll", "inline_query", "business_message", "unknown_kind",
    ]))  # fmt: skip
    if kind in ("message", "edited_message", "channel_post", "business_message"):
        body: Any = draw(tg_messages)
    elif kind == "callback_query":
        body = draw(tg_callbacks)
    else:
        body = draw(any_json)
    return {"update_id": draw(st.integers(1, 2**31)), kind: body}


# -- Slack events and interactions ---------------------------------------------------------------

slack_ids = st.one_of(
    st.sampled_from(["D0ALICE", "C0GENERAL", "C0DESK", "G0PRIVATE", "U0BOT"]),
    st.text(alphabet="CDGU0123456789ABCDEF", min_size=1, max_size=12),
)  # fmt: skip
slack_ts = st.builds(lambda s, u: f"{s}.{u:06d}", st.integers(0, 2**31), st.integers(0, 999_999))
slack_messages = st.fixed_dictionaries(
    {"type": st.sampled_from(["message", "app_mention"]), "channel": slack_ids, "ts": slack_ts},
    optional={
        "user": slack_ids, "text": texts, "thread_ts": slack_ts, "bot_id": st.just("B0OTHER"),
        "subtype": st.sampled_from(["message_changed", "message_deleted", "file_share",
                                    "thread_broadcast", "bot_message", "channel_join"]),
        "channel_type": st.sampled_from(["im", "channel", "group", "mpim"]),
        "files": st.just([{"id": "F1", "name": "a.png"}]), "team": st.just("T0TEST"),
        "blocks": any_json,
    },
)  # fmt: skip
slack_other_events = st.fixed_dictionaries(
    {"type": st.one_of(st.sampled_from([
        "reaction_added", "member_joined_channel", "app_home_opened", "team_join", "emoji_changed",
        "channel_rename", "pin_added", "link_shared", "message_metadata_posted",
    ]), st.text(max_size=20))},
    optional={"user": slack_ids, "channel": slack_ids, "item": any_json, "event_ts": slack_ts},
)  # fmt: skip


@st.composite
def slack_events(draw: st.DrawFn) -> dict[str, Any]:
    event = draw(st.one_of(slack_messages, slack_other_events))
    return {
        "token": "t", "team_id": "T0TEST", "api_app_id": "A0TEST", "type": "event_callback",
        "event_id": f"Ev{draw(st.integers(0, 10**12))}", "event_time": int(time.time()),
        "event": event,
    }  # fmt: skip


slack_actions = st.fixed_dictionaries(
    {"action_id": st.one_of(st.sampled_from([CLAIM, RESOLVE, RESOLVE_THREAD, RATE_UP, RATE_DOWN]),
                            st.text(max_size=20)),
     "type": st.sampled_from(["button", "static_select", "overflow"])},
    optional={"value": st.one_of(st.text(max_size=30), st.integers(-5, 2**40).map(str)),
              "block_id": st.text(max_size=10)},
)  # fmt: skip
slack_interactions = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("block_actions"), "user": st.fixed_dictionaries({"id": slack_ids}),
         "team": st.just({"id": "T0TEST"}), "actions": st.lists(slack_actions, min_size=1, max_size=3)},
        optional={"channel": st.fixed_dictionaries({"id": slack_ids}),
                  "message": st.fixed_dictionaries({"ts": slack_ts}, optional={"text": texts}),
                  "container": any_json, "response_url": st.just("http://127.0.0.1:9/gone"),
                  "trigger_id": st.just("1.2.3")},
    ),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["interactive_message", "shortcut", "message_action",
                                  "view_submission", "view_closed", "block_suggestion",
                                  "dialog_submission", "workflow_step_edit"]),
         "callback_id": st.text(max_size=20), "team": st.just({"id": "T0TEST"}),
         "user": st.fixed_dictionaries({"id": slack_ids})},
        optional={"actions": st.lists(slack_actions, min_size=1, max_size=2), "view": any_json,
                  "channel": st.fixed_dictionaries({"id": slack_ids}),
                  "trigger_id": st.just("1.2.3")},
    ),
)  # fmt: skip


# -- the gateway under fire ----------------------------------------------------------------------


class Target:
    """One gateway running Telegram (webhook) and Slack (HTTP events), embedded mode."""

    def __init__(self, p: Pipeline, telegram: FakeTelegram, slack: FakeSlack, port: int):
        self.p, self.telegram, self.slack = p, telegram, slack
        self.base = f"http://127.0.0.1:{port}"
        self.secret = hashlib.sha256(telegram.token.encode()).hexdigest()

    def to_telegram(self, client: httpx.Client, update: Any) -> int:
        headers = {"X-Telegram-Bot-Api-Secret-Token": self.secret}
        return client.post(self.base + HOOK, json=update, headers=headers).status_code

    def slack_event(self, client: httpx.Client, envelope: Any) -> int:
        body = json.dumps(envelope).encode()
        headers = {"Content-Type": "application/json", **self.slack.sign(body)}
        return client.post(self.base + "/slack/events", content=body, headers=headers).status_code

    def slack_interaction(self, client: httpx.Client, payload: Any) -> int:
        body = urlencode({"payload": json.dumps(payload)}).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded", **self.slack.sign(body)}
        return client.post(self.base + "/slack/events", content=body, headers=headers).status_code


@pytest.fixture
async def target(make_settings) -> AsyncIterator[Target]:  # type: ignore[no-untyped-def]
    async with FakeTelegram(rate_limits=False) as telegram, FakeSlack(rate_limits=False) as slack:
        port = free_port()
        config = make_settings(
            telegram_token=telegram.token, telegram_api_url=telegram.base_url,
            telegram_webhook_url=f"http://127.0.0.1:{port}{HOOK}", slack_bot_token=slack.bot_token,
            slack_signing_secret=slack.signing_secret, slack_api_url=slack.base_url,
            slack_updates_per_minute=100_000, http_port=port, desk="slack:C0DESK",
        )  # fmt: skip
        channels = [TelegramChannel(config), SlackChannel(config)]
        async with pipeline(config, FixedReplyBackend("Fine."), channels=channels) as p:
            yield Target(p, telegram, slack, port)


async def fire(
    target: Target,
    caplog: pytest.LogCaptureFixture,
    strategy: st.SearchStrategy[tuple[Any, bool]],
    send: Callable[[httpx.Client, Any], int],
    allowed: Callable[[bool, int], bool],
) -> None:
    """Send ``EXAMPLES`` payloads drawn from ``strategy`` (from a thread: the gateway runs on this
    loop), each answered with a status ``allowed`` (given whether it is well-formed); none may
    log an exception."""

    def run() -> None:
        with httpx.Client(timeout=30) as client:

            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            @given(example=strategy)
            def one(example: tuple[Any, bool]) -> None:
                payload, well_formed = example
                status = send(client, payload)
                assert allowed(well_formed, status), (status, json.dumps(payload)[:300])

            one()

    with caplog.at_level(logging.WARNING):
        await asyncio.to_thread(run)
        await asyncio.sleep(0.5)  # replies to the well-formed ones are still being shown
    raised = [r for r in caplog.records if r.exc_info or r.levelno >= logging.CRITICAL]
    assert not raised, [f"{r.name}: {r.getMessage()}" for r in raised[:3]]


def never_5xx(_well_formed: bool, status: int) -> bool:
    return status < 500


def acked(well_formed: bool, status: int) -> bool:
    """Slack's own requests, of any kind, are acked (200); malformed ones get no 5xx."""
    return status == 200 if well_formed else status < 500


async def next_message_answered(target: Target) -> None:
    """The gateway keeps serving: a real message on each platform is answered."""
    update = target.telegram.private_message("after the storm", user_id=77, first_name="Real")
    assert await target.telegram.post_webhook(update, secret=target.secret) == 200
    await target.telegram.wait_for(lambda f: [m["text"] for m in f.messages_in(77)] == ["Fine."])
    status, _took = await target.slack.post_event(
        f"{target.base}/slack/events", target.slack.dm("after the storm", user="U0REAL",
                                                       channel="D0REAL")
    )  # fmt: skip
    assert status == 200
    await target.slack.wait_for(lambda f: [m["text"] for m in f.messages_in("D0REAL")] == ["Fine."])


async def test_fuzzed_telegram_updates_to_the_webhook(
    target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    await fire(target, caplog, mixed(tg_updates()), target.to_telegram, never_5xx)
    await next_message_answered(target)


async def test_fuzzed_slack_events_are_each_acked_with_200(
    target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    await fire(target, caplog, mixed(slack_events()), target.slack_event, acked)
    await next_message_answered(target)


async def test_fuzzed_slack_interactions_are_each_acked_with_200(
    target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    await fire(target, caplog, mixed(slack_interactions), target.slack_interaction, acked)
    await next_message_answered(target)
