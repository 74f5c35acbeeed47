"""Checks FakeSlack against the real slack_sdk client, signature verifier and Socket Mode client,
so that tests built on the fake fail for the reasons Slack would fail them."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from tests.fakes.slack_api import FakeSlack

TOKEN = "xoxb-test"
APP_TOKEN = "xapp-test"


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(bot_token=TOKEN) as server:
        yield server


@pytest.fixture
def client(fake: FakeSlack) -> AsyncWebClient:
    return AsyncWebClient(token=TOKEN, base_url=fake.base_url)


async def _error_of(call: Any) -> SlackApiError:
    with pytest.raises(SlackApiError) as caught:
        await call
    return caught.value


async def test_auth_test_describes_the_bot(client: AsyncWebClient, fake: FakeSlack) -> None:
    me = await client.auth_test()
    assert (me["team_id"], me["user_id"], me["bot_id"]) == ("T0TEST", "U0BOT", "B0BOT")
    assert me["url"].startswith("https://") and me["team"] and me["user"]


async def test_wrong_or_missing_token_is_invalid_auth(fake: FakeSlack) -> None:
    for token in ("xoxb-wrong", None):
        error = await _error_of(AsyncWebClient(token=token, base_url=fake.base_url).auth_test())
        assert error.response.status_code == 200
        assert error.response["error"] == "invalid_auth"
    assert [c.status for c in fake.calls_to("auth.test")] == [200, 200]


async def test_unknown_method(client: AsyncWebClient) -> None:
    error = await _error_of(client.api_call("pins.add", json={"channel": "C1"}))
    assert error.response["error"] == "unknown_method"


async def test_post_then_update_reads_back(client: AsyncWebClient, fake: FakeSlack) -> None:
    posted = await client.chat_postMessage(channel="C1", text="Thinking…", mrkdwn=True)
    ts = posted["ts"]
    assert posted["channel"] == "C1" and posted["message"]["bot_id"] == "B0BOT"
    assert posted["message"]["user"] == "U0BOT" and posted["message"]["ts"] == ts
    updated = await client.chat_update(channel="C1", ts=ts, text="Done: *yes*")
    assert (updated["ts"], updated["text"]) == (ts, "Done: *yes*")
    [stored] = fake.messages_in("C1")
    assert stored["texts"] == ["Thinking…", "Done: *yes*"] and stored["text"] == "Done: *yes*"
    assert stored["thread_ts"] is None and stored["over_4000"] is False
    [call] = fake.calls_to("chat.update", channel="C1")
    assert call.params["ts"] == ts and "token" not in call.params


async def test_ts_values_are_unique_and_increasing(client: AsyncWebClient) -> None:
    stamps = [(await client.chat_postMessage(channel=f"C{i}", text="x"))["ts"] for i in range(5)]
    assert all(len(ts.split(".")[1]) == 6 for ts in stamps)
    assert stamps == sorted(stamps, key=float) and len(set(stamps)) == 5


async def test_form_encoded_call_is_understood(client: AsyncWebClient, fake: FakeSlack) -> None:
    blocks = '[{"type": "section", "text": {"type": "mrkdwn", "text": "hi"}}]'
    await client.api_call(
        "chat.postMessage", data={"channel": "C2", "text": "hi", "blocks": blocks}
    )
    [stored] = fake.messages_in("C2")
    assert stored["blocks"][0]["text"]["text"] == "hi"


async def test_unknown_ts_is_message_not_found(client: AsyncWebClient) -> None:
    error = await _error_of(client.chat_update(channel="C3", ts="1700000000.000100", text="x"))
    assert error.response["error"] == "message_not_found"


async def test_second_post_within_a_second_gets_429(
    client: AsyncWebClient, fake: FakeSlack
) -> None:
    await client.chat_postMessage(channel="C4", text="first")
    error = await _error_of(client.chat_postMessage(channel="C4", text="second"))
    assert error.response.status_code == 429
    assert error.response.headers["Retry-After"] == "1"
    assert error.response["error"] == "ratelimited"
    # Another channel has its own budget, and the refused post did not count
    await client.chat_postMessage(channel="C5", text="elsewhere")
    assert fake.count_429() == 1
    assert [c.status for c in fake.calls_to("chat.postMessage", "C4")] == [200, 429]
    assert [m["text"] for m in fake.messages_in("C4")] == ["first"]


async def test_editing_one_message_too_often_gets_429(
    client: AsyncWebClient, fake: FakeSlack
) -> None:
    ts = (await client.chat_postMessage(channel="C6", text="a"))["ts"]
    await client.chat_update(channel="C6", ts=ts, text="ab")
    error = await _error_of(client.chat_update(channel="C6", ts=ts, text="abc"))
    assert error.response.status_code == 429
    assert fake.messages_in("C6")[0]["texts"] == ["a", "ab"]


async def test_update_tier_3_allows_50_a_minute(client: AsyncWebClient, fake: FakeSlack) -> None:
    posts = [await client.chat_postMessage(channel=f"T{i}", text="x") for i in range(51)]
    for post in posts[:50]:
        await client.chat_update(channel=post["channel"], ts=post["ts"], text="y")
    last = posts[50]
    error = await _error_of(client.chat_update(channel=last["channel"], ts=last["ts"], text="y"))
    assert error.response.status_code == 429
    assert 1 <= int(error.response.headers["Retry-After"]) <= 60


async def test_fail_next_answers_429_once(client: AsyncWebClient, fake: FakeSlack) -> None:
    fake.fail_next("chat.postMessage", retry_after=7)
    error = await _error_of(client.chat_postMessage(channel="C7", text="x"))
    assert (error.response.status_code, error.response.headers["Retry-After"]) == (429, "7")
    await client.chat_postMessage(channel="C7", text="x")
    assert fake.count_429() == 1


async def test_text_limits() -> None:
    async with FakeSlack(rate_limits=False) as fake:
        client = AsyncWebClient(token=TOKEN, base_url=fake.base_url)
        await client.chat_postMessage(channel="C8", text="a" * 40_000)
        error = await _error_of(client.chat_postMessage(channel="C8", text="a" * 40_001))
        assert error.response["error"] == "msg_too_long"
        ts = (await client.chat_postMessage(channel="C9", text="a" * 4_000))["ts"]
        assert fake.messages_in("C9")[0]["over_4000"] is False
        await client.chat_update(channel="C9", ts=ts, text="a" * 4_001)
        await client.chat_update(channel="C9", ts=ts, text="short again")
        assert fake.messages_in("C9")[0]["over_4000"] is True
        assert fake.messages_in("C8")[0]["over_4000"] is True


async def test_long_section_block_is_invalid_blocks(client: AsyncWebClient) -> None:
    def section(size: int) -> list[dict[str, Any]]:
        return [{"type": "section", "text": {"type": "mrkdwn", "text": "b" * size}}]

    await client.chat_postMessage(channel="C10", text="fallback", blocks=section(3_000))
    error = await _error_of(client.chat_postMessage(channel="C11", text="x", blocks=section(3_001)))
    assert error.response["error"] == "invalid_blocks"
    assert "/blocks/0/text/text" in error.response["errors"][0]


async def test_users_info_and_lookup_count(client: AsyncWebClient, fake: FakeSlack) -> None:
    fake.add_user("U0BOB", "bob", "Bobby")
    for _ in range(2):
        user = (await client.users_info(user="U0BOB"))["user"]
    assert (user["id"], user["name"], user["profile"]["display_name"]) == ("U0BOB", "bob", "Bobby")
    assert user["real_name"] == user["profile"]["real_name"] == "Bobby"
    error = await _error_of(client.users_info(user="U0NOBODY"))
    assert error.response["error"] == "user_not_found"
    assert fake.user_lookups["U0BOB"] == 2 and len(fake.calls_to("users.info")) == 3


async def test_conversations_replies_returns_the_thread(
    client: AsyncWebClient, fake: FakeSlack
) -> None:
    root = fake.mention("help me")["event"]
    assert root["type"] == "app_mention" and root["text"] == "<@U0BOT> help me"
    first = await client.chat_postMessage(channel="C0SUPPORT", text="sure", thread_ts=root["ts"])
    follow_up = fake.thread_reply("thanks", thread_ts=root["ts"])["event"]
    assert follow_up["parent_user_id"] == "U0ALICE"
    fake.mention("unrelated")
    thread = await client.conversations_replies(channel="C0SUPPORT", ts=first["ts"])
    texts = [m["text"] for m in thread["messages"]]
    assert texts == ["<@U0BOT> help me", "sure", "thanks"]
    parent = thread["messages"][0]
    assert parent["reply_count"] == 2 and parent["reply_users"] == ["U0ALICE", "U0BOT"]
    error = await _error_of(client.conversations_replies(channel="C0SUPPORT", ts="1.000001"))
    assert error.response["error"] == "thread_not_found"


async def test_edits_and_deletions_reach_the_thread(
    client: AsyncWebClient, fake: FakeSlack
) -> None:
    root = fake.mention("first")["event"]
    reply = fake.thread_reply("typo", thread_ts=root["ts"])["event"]
    changed = fake.message_changed("fixed")["event"]
    assert changed["subtype"] == "message_changed" and changed["message"]["ts"] == reply["ts"]
    assert changed["previous_message"]["text"] == "typo"
    deleted = fake.message_deleted(ts=root["ts"])["event"]
    assert deleted["deleted_ts"] == root["ts"]
    thread = await client.conversations_replies(channel="C0SUPPORT", ts=root["ts"])
    assert [m["text"] for m in thread["messages"]] == ["fixed"]


def test_envelopes_look_like_slacks(fake: FakeSlack) -> None:
    dm, other, own = fake.dm("hi"), fake.bot_message("beep"), fake.bot_message("me", own=True)
    assert dm["type"] == "event_callback" and dm["api_app_id"] == "A0TEST"
    assert dm["team_id"] == "T0TEST" and isinstance(dm["event_time"], int)
    assert (dm["event"]["channel_type"], dm["event"]["user"]) == ("im", "U0ALICE")
    assert len({dm["event_id"], other["event_id"], own["event_id"]}) == 3
    assert dm["event_id"].startswith("Ev")
    assert (other["event"]["subtype"], other["event"]["bot_id"]) == ("bot_message", "B0OTHER")
    assert "subtype" not in own["event"]
    assert (own["event"]["bot_id"], own["event"]["user"]) == ("B0BOT", "U0BOT")


def test_sign_matches_slack_sdk_verifier(fake: FakeSlack) -> None:
    body = b'{"type":"event_callback","event":{"text":"h\xc3\xa9"}}'
    headers = fake.sign(body)
    verifier = SignatureVerifier(fake.signing_secret)
    stamp, signature = headers["X-Slack-Request-Timestamp"], headers["X-Slack-Signature"]
    assert verifier.is_valid(body, stamp, signature)
    assert not verifier.is_valid(body + b" ", stamp, signature)
    stale = fake.sign(body, int(time.time()) - 600)
    assert not verifier.is_valid(
        body, stale["X-Slack-Request-Timestamp"], stale["X-Slack-Signature"]
    )


async def test_post_event_is_signed_and_carries_retry_headers(fake: FakeSlack) -> None:
    seen: list[tuple[dict[str, str], bool]] = []
    verifier = SignatureVerifier(fake.signing_secret)

    async def events(request: web.Request) -> web.Response:
        body = await request.read()
        stamp = request.headers.get("X-Slack-Request-Timestamp")
        valid = verifier.is_valid(body, stamp, request.headers.get("X-Slack-Signature"))
        seen.append((dict(request.headers), valid))
        payload = json.loads(body)
        if valid and payload["type"] == "url_verification":
            return web.json_response({"challenge": payload["challenge"]})
        return web.Response(status=200 if valid else 401)

    app = web.Application()
    app.router.add_post("/slack/events", events)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/slack/events"
    try:
        status, took = await fake.post_event(url, fake.dm("hi"), retry_num=1)
        assert status == 200 and 0 <= took < 5
        headers, valid = seen[-1]
        assert valid and headers["X-Slack-Retry-Num"] == "1"
        assert headers["X-Slack-Retry-Reason"] == "http_timeout"
        assert (await fake.post_event(url, fake.dm("plain")))[0] == 200
        assert "X-Slack-Retry-Num" not in seen[-1][0]
        assert (await fake.post_event(url, fake.dm("x"), signature="v0=bad"))[0] == 401
        old = int(time.time()) - 600
        assert (await fake.post_event(url, fake.dm("x"), timestamp=old))[0] == 401
        assert await fake.url_verification(url) == (200, True)
    finally:
        await runner.cleanup()


async def test_wait_for_reports_the_last_calls(client: AsyncWebClient, fake: FakeSlack) -> None:
    await client.chat_postMessage(channel="C12", text="x")
    await fake.wait_for(lambda f: len(f.messages_in("C12")) == 1, timeout=1)
    with pytest.raises(AssertionError, match=r"chat\.postMessage channel=C12 -> 200"):
        await fake.wait_for(lambda f: False, timeout=0.05)


# -- Socket Mode ---------------------------------------------------------------------------------


async def _socket_url(fake: FakeSlack) -> str:
    opened = await AsyncWebClient(base_url=fake.base_url).apps_connections_open(app_token=APP_TOKEN)
    return opened["url"]


async def test_apps_connections_open_takes_only_the_app_token(
    client: AsyncWebClient, fake: FakeSlack
) -> None:
    url = await _socket_url(fake)
    assert url.startswith(f"ws://127.0.0.1:{fake.port}/socket?ticket=")
    error = await _error_of(client.apps_connections_open(app_token=TOKEN))
    assert error.response["error"] == "not_allowed_token_type"
    error = await _error_of(client.apps_connections_open(app_token="xapp-wrong"))
    assert error.response["error"] == "invalid_auth"
    # ... and the app token opens nothing else
    error = await _error_of(AsyncWebClient(token=APP_TOKEN, base_url=fake.base_url).auth_test())
    assert error.response["error"] == "not_allowed_token_type"
    assert [c.status for c in fake.calls_to("apps.connections.open")] == [200, 200, 200]


async def test_socket_tickets_are_one_shot(fake: FakeSlack) -> None:
    url = await _socket_url(fake)
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url) as ws:
            hello = await ws.receive_json(timeout=1)
            assert hello["type"] == "hello" and hello["num_connections"] == 1
            assert hello["connection_info"] == {"app_id": "A0TEST"} and hello["debug_info"]
            await fake.wait_socket_connected(1)
            for reused in (url, url.split("?")[0] + "?ticket=made-up"):
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await session.ws_connect(reused)
                assert refused.value.status == 401
        await fake.wait_for(lambda f: not f.socket_connected, timeout=1)
    assert fake.socket_connections == 1


async def test_socket_mode_client_receives_and_acks_events(
    client: AsyncWebClient, fake: FakeSlack
) -> None:
    requests: list[SocketModeRequest] = []
    messages: list[dict[str, Any]] = []

    async def on_request(socket_client: Any, request: SocketModeRequest) -> None:
        requests.append(request)
        ack = SocketModeResponse(envelope_id=request.envelope_id, payload={"seen": True})
        await socket_client.send_socket_mode_response(ack)

    async def on_message(socket_client: Any, message: dict, raw: str | None) -> None:
        messages.append(message)

    socket_client = SocketModeClient(app_token=APP_TOKEN, web_client=client)
    socket_client.socket_mode_request_listeners.append(on_request)
    socket_client.message_listeners.append(on_message)
    try:
        await socket_client.connect()
        await fake.wait_socket_connected(1)
        took = await fake.send_socket_event(fake.dm("hi there"))
        assert 0 <= took < 1
        [request] = requests
        assert (request.type, request.retry_attempt, request.retry_reason) == ("events_api", 0, "")
        assert request.payload["event"]["text"] == "hi there"
        assert request.payload["event"]["channel_type"] == "im"
        [ack] = fake.socket_acks
        assert (ack.envelope_id, ack.payload) == (request.envelope_id, {"seen": True})
        assert messages[0]["type"] == "hello"
        # The client pings on connecting; the fake's pong is what keeps it from reconnecting
        await fake.wait_for(lambda f: socket_client.last_ping_pong_time is not None, timeout=1)

        await fake.send_socket_event(fake.dm("again"), retry_attempt=2, retry_reason="timeout")
        assert (requests[-1].retry_attempt, requests[-1].retry_reason) == (2, "timeout")
        assert fake.count_acks() == 2
    finally:
        await socket_client.close()
    await fake.wait_for(lambda f: not f.socket_connected, timeout=1)


async def test_send_socket_event_fails_without_a_client_or_an_ack(fake: FakeSlack) -> None:
    with pytest.raises(AssertionError, match="no Socket Mode client connected"):
        await fake.send_socket_event(fake.dm("anyone?"), connect_timeout=0.05)
    async with aiohttp.ClientSession() as session, session.ws_connect(await _socket_url(fake)):
        with pytest.raises(AssertionError, match=r"no ack for envelope .* \(message event\)"):
            await fake.send_socket_event(fake.dm("ignored"), ack_timeout=0.1)
    assert fake.count_acks() == 0


async def test_stop_closes_open_sockets() -> None:
    fake = FakeSlack()
    await fake.start()
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(await _socket_url(fake)) as ws,
    ):
        assert (await ws.receive_json(timeout=1))["type"] == "hello"
        await fake.wait_socket_connected(1)
        # The client is not reading, so the stop cannot count on it answering the close frame
        started = time.monotonic()
        await fake.stop()
        assert time.monotonic() - started < 1
        assert not fake.socket_connected
        message = await ws.receive(timeout=1)
        assert (message.type, message.data) == (aiohttp.WSMsgType.CLOSE, 1001)
