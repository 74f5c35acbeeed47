"""Keeps the configured secrets out of everything frontdesk prints: log lines (its own and every
library's, at any level), CLI errors, and the traceback of a crash.

``install`` runs once, when the CLI builds the settings. It learns every secret the settings hold
(the Telegram token, the Slack bot and app tokens and signing secret, the webhook secret, the
OpenAI API key, and the password inside each URL: database, Redis, OpenAI servers) and puts one
filter on the root logger's handlers, which every logger's records reach. The filter replaces each
secret, in the message, its arguments and its traceback, with ``***``. ``mask`` does the same for
text that does not go through logging (the CLI's one-line errors). A password inside any URL-like
text is masked too, whether or not it was configured, and whether or not the URL parses.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

if TYPE_CHECKING:
    from frontdesk.settings import Settings

MASK = "***"
_MIN_LENGTH = 4  # a shorter "secret" would mask ordinary words
# scheme://user:password@ (the password is whatever runs to the last @ of the authority)
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][\w+.-]*:/*[^\s:/@]*:)([^\s/]*)(@)")


def url_password(url: str) -> str | None:
    """The password in ``url``, found even in a URL that does not parse (a missing ``//``, an
    ``@`` inside the password)."""
    userinfo, at, _host = url.rpartition("@")
    if not at:
        return None
    _scheme, sep, rest = userinfo.partition("://")
    if not sep:
        rest = userinfo.rsplit("/", 1)[-1]
    _user, colon, password = rest.partition(":")
    return password if colon and password else None


def hide_password(url: str) -> str:
    """``url`` with its password as ``***``, fit for a message: only the password, which ends
    the part before the last ``@``."""
    password = url_password(url)
    if not password:
        return url
    userinfo, _at, host = url.rpartition("@")
    return f"{userinfo[: len(userinfo) - len(password)]}{MASK}@{host}"


class SecretMasker:
    """The secrets a process knows, and their replacement in text."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._ordered: list[str] = []

    def add(self, values: Iterable[str | None]) -> None:
        for value in values:
            if not value or len(value) < _MIN_LENGTH:
                continue
            # as written, and as a URL carries it (":" of a Telegram token as %3A, and so on)
            self._secrets |= {value, quote(value, safe=""), quote(value), unquote(value)}
        self._ordered = sorted(self._secrets, key=len, reverse=True)  # longest first

    def mask(self, text: str) -> str:
        for secret in self._ordered:
            if secret in text:
                text = text.replace(secret, MASK)
        if "@" in text:
            text = _URL_PASSWORD.sub(rf"\1{MASK}\3", text)
        return text


masker = SecretMasker()  # the process's one


def mask(text: str) -> str:
    """``text`` with every secret the process knows masked."""
    return masker.mask(text)


def secrets_of(settings: Settings) -> list[str | None]:
    """Every secret ``settings`` holds."""
    urls = [
        settings.database_url, settings.redis_url, settings.embeddings_url,
        *settings.openai_base_urls,
    ]  # fmt: skip
    return [
        settings.telegram_token,
        settings.telegram_webhook_secret,
        settings.slack_bot_token,
        settings.slack_app_token,
        settings.slack_signing_secret,
        settings.openai_api_key,
        settings.embeddings_api_key,
        *(url_password(url) for url in urls if url),
    ]


class SecretFilter(logging.Filter):
    """Masks secrets in a record before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # arguments that do not fit the format
            message = f"{record.msg!r} {record.args!r}"
        record.msg, record.args = masker.mask(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = masker.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = masker.mask(record.stack_info)
        return True


_FILTER = SecretFilter()


def install(settings: Settings) -> None:
    """Learn ``settings``' secrets and mask them in every log handler and in a crash's
    traceback. Safe to call again: the filter goes on each handler once."""
    masker.add(secrets_of(settings))
    for handler in logging.getLogger().handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
    if getattr(sys.excepthook, "masks_secrets", False):
        return
    default = sys.excepthook

    def excepthook(
        kind: type[BaseException], error: BaseException, tb: TracebackType | None
    ) -> None:
        import traceback

        text = "".join(traceback.format_exception(kind, error, tb))
        sys.stderr.write(masker.mask(text))

    excepthook.masks_secrets = True  # type: ignore[attr-defined]
    excepthook.default = default  # type: ignore[attr-defined]
    sys.excepthook = excepthook
