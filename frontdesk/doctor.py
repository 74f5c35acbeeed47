"""`frontdesk doctor`: checks each part the configuration names, the way the services will use it,
and says what it found: the engine (started, and a prompt rendered and answered), Redis, the
database and its schema, and the handoff desk (its channel or supergroup, as the bot can use
it)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from frontdesk.engine.backends import GenerationParams, create_backend
from frontdesk.engine.queue import RedisQueue
from frontdesk.errors import FrontdeskError
from frontdesk.settings import Settings
from frontdesk.storage import Store
from frontdesk.wire import ChatMessage


@dataclass(frozen=True, slots=True)
class Check:
    part: str
    ok: bool
    detail: str
    seconds: float


async def diagnose(settings: Settings) -> list[Check]:
    checks = [await _engine(settings), await _redis(settings), await _database(settings)]
    checks.extend([await _desk(settings, desk) for desk in settings.desks])
    return checks


async def _desk(settings: Settings, desk: str) -> Check:
    """A place of the handoff desk: its channel exists and the bot is in it (Slack), or its
    supergroup has topics and the bot may manage them (Telegram)."""
    started = time.monotonic()
    platform, _, place = desk.partition(":")
    try:
        detail = await (_slack_desk(settings, place) if platform == "slack"
                        else _telegram_desk(settings, place))  # fmt: skip
    except FrontdeskError as exc:
        return Check("desk", False, f"{desk}: {exc}", time.monotonic() - started)
    return Check("desk", True, detail, time.monotonic() - started)


async def _slack_desk(settings: Settings, channel: str) -> str:
    from slack_sdk.errors import SlackApiError
    from slack_sdk.web.async_client import AsyncWebClient

    if not settings.slack_bot_token:
        raise FrontdeskError("a Slack desk needs FRONTDESK_SLACK_BOT_TOKEN")
    client = AsyncWebClient(token=settings.slack_bot_token, base_url=settings.slack_api_url)
    try:
        info = await client.conversations_info(channel=channel)
    except SlackApiError as exc:
        raise FrontdeskError(f"Slack says {exc.response.get('error')}") from None
    except OSError as exc:
        raise FrontdeskError(f"cannot reach the Slack Web API: {exc}") from None
    found = info.get("channel") or {}
    if not found.get("is_member"):
        raise FrontdeskError(f"the bot is not in #{found.get('name', channel)}: invite it")
    return f"Slack channel #{found.get('name', channel)}, the bot in it"


async def _telegram_desk(settings: Settings, chat: str) -> str:
    from telegram import Bot
    from telegram.error import InvalidToken, TelegramError

    if not settings.telegram_token:
        raise FrontdeskError("a Telegram desk needs FRONTDESK_TELEGRAM_TOKEN")
    bot = Bot(settings.telegram_token, base_url=settings.telegram_api_url)
    try:
        async with bot:
            found = await bot.get_chat(int(chat))
            member = await bot.get_chat_member(int(chat), bot.id)
    except InvalidToken:  # its text holds the token
        raise FrontdeskError("Telegram refused FRONTDESK_TELEGRAM_TOKEN") from None
    except TelegramError as exc:
        said = str(exc).replace(settings.telegram_token, "***")
        raise FrontdeskError(f"Telegram says {said}") from None
    if not found.is_forum:
        raise FrontdeskError(f"{found.title or chat} has no topics: turn them on")
    if not getattr(member, "can_manage_topics", False):
        raise FrontdeskError(f"the bot may not manage topics in {found.title or chat}")
    return f"Telegram supergroup {found.title or chat}, with topics the bot may manage"


async def _engine(settings: Settings) -> Check:
    started = time.monotonic()
    try:
        backend = create_backend(settings)
        await backend.start()
        try:
            sizing = backend.describe() if hasattr(backend, "describe") else ""
            prompt = backend.render([ChatMessage("user", "Say OK.")])
            params = GenerationParams(uuid.uuid4().hex, max_tokens=4, temperature=0.0)
            pieces = [chunk async for chunk in backend.stream(prompt, params)]
        finally:
            await backend.stop()
    except FrontdeskError as exc:
        return Check("engine", False, f"{settings.engine}: {exc}", time.monotonic() - started)
    usage = pieces[-1].usage if pieces else None
    figures = f"{usage.completion_tokens} tokens answered" if usage else "answered"
    detail = (
        f"{settings.engine} · model {backend.model} · context {settings.context_tokens} tokens "
        f"(replies up to {settings.max_new_tokens}) · {figures}"
        + (f" · {sizing}" if sizing else "")
    )
    return Check("engine", True, detail, time.monotonic() - started)


async def _redis(settings: Settings) -> Check:
    started = time.monotonic()
    if settings.redis_url is None:
        return Check("queue", True, "embedded: in-process queue (no FRONTDESK_REDIS_URL)", 0.0)
    queue = RedisQueue(settings.redis_url, consumer="doctor", prefix=settings.queue_prefix)
    try:
        status = await queue.status()
    except FrontdeskError as exc:
        return Check("queue", False, str(exc), time.monotonic() - started)
    finally:
        await queue.stop()
    consumers = len(status.consumers)
    detail = (
        f"Redis reachable · {status.length} turns in {status.stream}, {status.pending} pending, "
        f"{status.dead} dead-lettered · {consumers} worker{'s' if consumers != 1 else ''} known"
    )
    return Check("queue", True, detail, time.monotonic() - started)


async def _database(settings: Settings) -> Check:
    started = time.monotonic()
    try:
        store = Store(settings.database_url, pool_size=1)
    except FrontdeskError as exc:
        return Check("database", False, str(exc), 0.0)
    if settings.embedded:
        return await _embedded_database(store, started)
    try:
        await store.start()  # checks that the schema is current
    except FrontdeskError as exc:
        return Check("database", False, str(exc), time.monotonic() - started)
    finally:
        await store.stop()
    detail = f"{store.dialect} reachable · schema current"
    return Check("database", True, detail, time.monotonic() - started)


async def _embedded_database(store: Store, started: float) -> Check:
    """Embedded mode creates or upgrades its schema on its first run, so a database that is not
    there yet, or is behind, is no failure: doctor says what the first run will do and creates
    nothing (connecting would create the SQLite file)."""
    first_run = "`frontdesk shell` creates it on its first run"
    path = store.sqlite_file()
    if path is not None and not path.exists():
        detail = f"sqlite file {path} does not exist yet: {first_run}, with its schema"
        return Check("database", True, detail, time.monotonic() - started)
    try:
        current = await store.schema_revision()
    except FrontdeskError as exc:
        return Check("database", False, str(exc), time.monotonic() - started)
    finally:
        await store.stop()
    if current == store.head_revision():
        detail = f"{store.dialect} reachable · schema current"
    elif current is None:
        detail = f"{store.dialect} reachable · no schema yet: {first_run}"
    else:
        detail = (
            f"{store.dialect} reachable · schema at revision {current}, not "
            f"{store.head_revision()}: the first run upgrades it (embedded mode)"
        )
    return Check("database", True, detail, time.monotonic() - started)
