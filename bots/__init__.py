"""frontdesk's platform side: the ``Channel`` protocol, the gateway that runs channels, and the
channels themselves. ``build_channels`` makes every platform channel the settings configure."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .channel import Channel, ReplyStream
from .console import ConsoleChannel
from .gateway import Gateway

if TYPE_CHECKING:
    from frontdesk.settings import Settings

# name -> "module:class"; each class has from_settings(settings) -> channel or None (not configured)
CHANNELS = {
    "telegram": "frontdesk.bots.telegram:TelegramChannel",
    "slack": "frontdesk.bots.slack:SlackChannel",
}


def build_channels(settings: Settings) -> list[Channel]:
    """The platform channels the settings configure (imported only when configured)."""
    channels: list[Channel] = []
    for target in CHANNELS.values():
        module, name = target.split(":")
        channel = getattr(importlib.import_module(module), name).from_settings(settings)
        if channel is not None:
            channels.append(channel)
    return channels


__all__ = ["CHANNELS", "Channel", "ConsoleChannel", "Gateway", "ReplyStream", "build_channels"]
