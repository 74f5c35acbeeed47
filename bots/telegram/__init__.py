"""The Telegram channel: python-telegram-bot (v22) inside the gateway's event loop.

Updates arrive by long polling, or by webhook on the gateway's HTTP server when
``FRONTDESK_TELEGRAM_WEBHOOK_URL`` is set (a request without the right secret token gets 403). In
private chats every text is a turn; in groups only a message that @mentions the bot, replies to it,
or is a /command for it. A reply streams live: "typing…" until the first text, then one message
edited with the growing text at most every ``FRONTDESK_TELEGRAM_EDIT_INTERVAL``, closed by a final
edit. Text over 4096 characters (UTF-16 units, as Telegram counts) continues in new messages, cut
at paragraph or sentence boundaries. Markdown becomes Telegram HTML; a part Telegram cannot parse
is sent as plain text instead, so a user never sees a failed message. Each chat is paced to
Telegram's limits (one message or edit a second, 20 a minute in groups), and a 429 is waited out
and retried, so no reply is lost.

Everything Telegram-specific lives in this package: past it, a message is an ``InboundMessage``.
"""

from .channel import TelegramChannel

__all__ = ["TelegramChannel"]
