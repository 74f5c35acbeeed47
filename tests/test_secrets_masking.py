"""The password of a URL is found and masked in every shape an operator may write one, including
URLs that do not parse; configured secrets are masked as written and as a URL carries them."""

from __future__ import annotations

import logging
import sys

import pytest

from frontdesk.secrets import (
    SecretFilter,
    SecretMasker,
    hide_password,
    install,
    masker,
    url_password,
)


@pytest.mark.parametrize(
    ("url", "password", "shown"),
    [
        ("postgresql+asyncpg://u:s3cret@h/db", "s3cret", "postgresql+asyncpg://u:***@h/db"),
        ("redis://:s3cret@h:6379/0", "s3cret", "redis://:***@h:6379/0"),
        ("postgresql://u:p@ss@h/db", "p@ss", "postgresql://u:***@h/db"),
        ("postgresql+asyncpg//u:s3cret@h/db", "s3cret", "postgresql+asyncpg//u:***@h/db"),
        ("postgresql://postgres:a@apostgres/a", "a", "postgresql://postgres:***@apostgres/a"),
        ("postgresql://postgres@h/db", None, "postgresql://postgres@h/db"),
        ("sqlite+aiosqlite:///frontdesk.db", None, "sqlite+aiosqlite:///frontdesk.db"),
    ],
)
def test_a_urls_password_is_found_and_only_it_is_masked(
    url: str, password: str | None, shown: str
) -> None:
    assert url_password(url) == password
    assert hide_password(url) == shown


def test_secrets_are_masked_as_written_and_url_quoted_longest_first() -> None:
    secrets = SecretMasker()
    secrets.add(["123456:AAH-token", "abc", None, "p@ss word"])
    text = "GET /bot123456:AAH-token/getMe /bot123456%3AAAH-token/x p%40ss%20word abc"
    assert secrets.mask(text) == "GET /bot***/getMe /bot***/x *** abc"  # "abc" is too short


def test_the_log_filter_masks_the_message_its_arguments_and_its_traceback() -> None:
    masker.add(["filter-secret-Zq9"])
    try:
        raise RuntimeError("boom with filter-secret-Zq9")
    except RuntimeError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "token %s", ("filter-secret-Zq9",), sys.exc_info()
        )
    SecretFilter().filter(record)
    text = logging.Formatter().format(record)
    assert "filter-secret-Zq9" not in text and "token ***" in text and "boom with ***" in text


def test_a_crash_traceback_is_printed_with_its_secrets_masked(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, make_settings
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)  # this test's own, undone after
    install(make_settings(telegram_token="777:crash-secret-Zq9"))
    try:
        raise RuntimeError("died holding 777:crash-secret-Zq9")
    except RuntimeError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    printed = capsys.readouterr().err
    assert "RuntimeError: died holding ***" in printed and "crash-secret" not in printed
