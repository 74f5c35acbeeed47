"""frontdesk's platform side: the ``Channel`` protocol, the gateway that runs channels, and the
channels themselves, registered by name in ``CHANNELS``."""

from .channel import Channel, ReplyStream
from .console import ConsoleChannel
from .gateway import Gateway

CHANNELS: dict[str, type] = {"console": ConsoleChannel}

__all__ = ["CHANNELS", "Channel", "ConsoleChannel", "Gateway", "ReplyStream"]
