"""The updates the Telegram channel reads, and the shape they must have for it. python-telegram-bot
builds its objects from whatever JSON it is given without checking types, so a field of another
type (a chat id that is a list, entities on a message without text) raises later, in the middle
of taking the update. Telegram's own updates always have this shape; one that does not is acked
and dropped before it is read."""

from __future__ import annotations

from typing import Any

# the kinds of update the channel asks Telegram for (getUpdates' and setWebhook's allowed_updates)
ALLOWED_UPDATES = ["message", "edited_message", "callback_query"]

# field -> its type, or the shape of the object it holds ([shape]: a list of them); a field that
# is there must have its type, and the fields REQUIRED names for a shape must be there
Shape = dict[str, Any]
USER: Shape = {"id": int, "is_bot": bool, "first_name": str, "last_name": str, "username": str,
               "language_code": str}  # fmt: skip
CHAT: Shape = {"id": int, "type": str, "title": str, "username": str, "first_name": str,
               "is_forum": bool}  # fmt: skip
ENTITY: Shape = {"type": str, "offset": int, "length": int, "url": str, "user": USER}
MESSAGE: Shape = {
    "message_id": int, "date": int, "chat": CHAT, "from": USER, "sender_chat": CHAT,
    "text": str, "caption": str, "entities": [ENTITY], "caption_entities": [ENTITY],
    "message_thread_id": int, "is_topic_message": bool, "new_chat_members": [USER],
}  # fmt: skip
MESSAGE["reply_to_message"] = MESSAGE
CALLBACK: Shape = {"id": str, "from": USER, "chat_instance": str, "data": str,
                   "message": MESSAGE}  # fmt: skip
REQUIRED: dict[int, tuple[str, ...]] = {
    id(USER): ("id", "is_bot", "first_name"),
    id(CHAT): ("id", "type"),
    id(ENTITY): ("type", "offset", "length"),
    id(MESSAGE): ("message_id", "date", "chat"),
    id(CALLBACK): ("id", "from", "chat_instance"),
}
KINDS: dict[str, Shape] = {
    "message": MESSAGE,
    "edited_message": MESSAGE,
    "callback_query": CALLBACK,
}


def _fits(value: Any, shape: Any, depth: int = 0) -> bool:
    if isinstance(shape, list):
        return isinstance(value, list) and all(_fits(item, shape[0], depth) for item in value)
    if isinstance(shape, type):  # bool is an int in Python, and an int is no bool
        return isinstance(value, shape) and (shape is bool or not isinstance(value, bool))
    if not isinstance(value, dict) or depth > 8:
        return False
    if any(value.get(key) is None for key in REQUIRED.get(id(shape), ())):
        return False
    if "entities" in value and not isinstance(value.get("text"), str):
        return False  # entities point into a text
    if "caption_entities" in value and not isinstance(value.get("caption"), str):
        return False
    return all(
        _fits(value[key], field, depth + 1)
        for key, field in shape.items()
        if key in value and value[key] is not None
    )


def readable(update: Any) -> bool:
    """Whether ``update`` (the JSON of one) is one the channel reads, in the shape Telegram
    gives it: an ``update_id``, and one of ``ALLOWED_UPDATES`` whose fields have their types."""
    if not isinstance(update, dict) or type(update.get("update_id")) is not int:
        return False
    kinds = [kind for kind in KINDS if update.get(kind) is not None]
    return len(kinds) == 1 and _fits(update[kinds[0]], KINDS[kinds[0]])
