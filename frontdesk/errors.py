"""The exceptions frontdesk raises on purpose. Each edge translates them: a channel into a polite chat
message, the CLI into one line on stderr and a non-zero exit code. ``exit_code`` is that code."""

from __future__ import annotations


class FrontdeskError(Exception):
    """Base class: a failure with a message fit to show a user or an operator as it is."""

    exit_code = 1


class ConfigError(FrontdeskError):
    """A setting is missing or wrong."""

    exit_code = 2


class ModelNotFound(ConfigError):
    """The configured model file or directory does not exist."""


class EngineUnavailable(FrontdeskError):
    """The inference backend could not be started or has died."""


class EngineDead(EngineUnavailable):
    """The engine died under a running worker: it must hand its turns back and exit."""


class QueueUnavailable(FrontdeskError):
    """Redis cannot be reached."""


class StorageUnavailable(FrontdeskError):
    """The database cannot be reached, or its schema is not at the expected revision."""


class NotAccepted(StorageUnavailable):
    """A message the gateway could not store: the channel leaves it unacked, so that its platform
    delivers it again (a Telegram webhook gets a 5xx, Slack no ack)."""


class NotFound(FrontdeskError):
    """An id given on the command line does not exist."""

    exit_code = 3


class PromptTooLong(FrontdeskError):
    """Even the newest message alone does not fit the context budget."""
