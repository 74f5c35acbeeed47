"""How frontdesk's processes log: JSON lines for a log collector, readable lines on a terminal
(``FRONTDESK_LOG_FORMAT``: ``auto``, the default, picks by whether stderr is a TTY). Every line
written while a turn is handled carries that turn's ``turn_id``, ``conversation_id`` and
``platform``: the worker and the gateway set them (``turn_scope``) where a turn begins, and the
tasks started from there inherit them (contextvars). Secrets are masked before any formatter
runs (``frontdesk.secrets``); user text is logged at DEBUG only, by the code that logs."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

_TURN: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "frontdesk_turn", default=None
)
FIELDS = ("turn_id", "conversation_id", "platform")


@contextlib.contextmanager
def turn_scope(turn_id: str, conversation_id: int, platform: str) -> Iterator[None]:
    """Log lines written inside (and in tasks started inside) carry the turn's ids."""
    token = _TURN.set(
        {"turn_id": turn_id, "conversation_id": conversation_id, "platform": platform}
    )
    try:
        yield
    finally:
        _TURN.reset(token)


class TurnFilter(logging.Filter):
    """Puts the current turn's ids on each record (None outside a turn)."""

    def filter(self, record: logging.LogRecord) -> bool:
        turn = _TURN.get() or {}
        for field in FIELDS:
            if not hasattr(record, field):
                setattr(record, field, turn.get(field))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the turn's ids when in one, and a
    traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """Readable lines, with the turn's id when in one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        turn_id = getattr(record, "turn_id", None)
        return f"{text} [turn {turn_id}]" if turn_id else text


def configure(level: str, fmt: str = "auto") -> None:
    """Log to stderr at ``level``: JSON lines (``json``), readable ones (``text``), or by
    whether stderr is a terminal (``auto``). Like ``logging.basicConfig``, it does nothing
    when the root logger has a handler already (a host application's, or pytest's)."""
    root = logging.getLogger()
    if root.handlers:
        return
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    handler.addFilter(TurnFilter())
    root.addHandler(handler)
    root.setLevel(level.upper())
