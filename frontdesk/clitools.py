"""What every `frontdesk` sub-command shares: the settings object, running a coroutine with errors
turned into one line on stderr and an exit code, and JSON output for scripts."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

from frontdesk import logfmt
from frontdesk.errors import FrontdeskError
from frontdesk.secrets import install as install_secret_filter
from frontdesk.secrets import mask as mask_secrets
from frontdesk.settings import Settings

T = TypeVar("T")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` as one line on stderr, with every known secret masked; returns the
    Exit to raise."""
    err.print(Text.assemble(("error:", "bold red"), " ", mask_secrets(message)))  # not markup
    return typer.Exit(code)


def settings(ctx: typer.Context) -> Settings:
    """The one Settings object, built on first use from the environment and frontdesk.toml."""
    root = ctx.find_root()
    if root.obj is None:
        try:
            root.obj = Settings()
        except ValidationError as exc:
            problems = "; ".join(
                f"FRONTDESK_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                for e in exc.errors()
            )
            raise fail(f"bad configuration: {problems}", 2) from None
        logfmt.configure(root.obj.log_level, root.obj.log_format)
        install_secret_filter(root.obj)  # before anything can log a token or a password
    assert isinstance(root.obj, Settings)
    return root.obj


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop every frontdesk process runs on: uvloop where installed (Linux and
    macOS), else asyncio's own (None)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; a FrontdeskError becomes one line on stderr and its exit code,
    Ctrl-C a quiet exit 130."""
    try:
        # uvloop where installed (Linux and macOS): a faster event loop for the same code
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(coro)
    except FrontdeskError as exc:
        raise fail(str(exc), exc.exit_code) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(value: str | None, option: str) -> datetime | None:
    """A point in time from the command line: relative to now (``90d``, ``12h``, ``2w``, ``30m``)
    or a date or date-time (``2026-11-01``, ``2026-11-01T09:30``; UTC unless it says)."""
    if value is None:
        return None
    relative = _RELATIVE.match(value)
    if relative:
        amount, unit = int(relative.group(1)), _UNITS[relative.group(2)]
        return datetime.now(UTC) - timedelta(**{unit: amount})
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise fail(
            f"{option} {value!r} is neither a time ago (like 2d, 12h, 90d) nor a date "
            "(like 2026-11-01 or 2026-11-01T09:30)",
            2,
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def json_default(value: Any) -> Any:
    """What json.dumps cannot write itself: times as ISO 8601, dataclasses as objects."""
    if isinstance(value, datetime):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def print_json(data: Any) -> None:
    """Machine-readable output: plain JSON on stdout, no colour, no wrapping."""
    print(json.dumps(data, default=json_default, ensure_ascii=False, indent=2))
