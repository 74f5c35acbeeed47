"""The Slack requests frontdesk reads: the kinds it has listeners for, and the shape that it (and
bolt's listener matchers) can read. Slack's own requests always have that shape; one that does
not (a field of another type, a list where an object belongs) would raise in bolt's matchers or
in a listener, so the channel acks it and drops it, as it does the kinds it has no listener for
(bolt's matchers assume each kind's fields: a legacy attachment action without actions
raises)."""

from __future__ import annotations

from typing import Any

# the string fields of the message and app_mention events that frontdesk answers
MESSAGE_STRINGS = ("user", "channel", "ts", "thread_ts", "text", "subtype", "bot_id",
                   "channel_type", "team", "event_ts")  # fmt: skip
BODY_STRINGS = ("type", "team_id", "event_id", "api_app_id", "callback_id", "trigger_id",
                "response_url")  # fmt: skip
ACTION_STRINGS = ("action_id", "value", "block_id", "type", "name")


def _strings(data: dict[str, Any], keys: tuple[str, ...]) -> bool:
    return all(isinstance(data.get(key), str | None) for key in keys)


def _object_with(data: dict[str, Any], key: str, field: str) -> bool:
    """``data[key]`` is absent, or an object whose ``field`` is absent or a string."""
    value = data.get(key)
    return value is None or (isinstance(value, dict) and isinstance(value.get(field), str | None))


def handled(body: dict[str, Any]) -> bool:
    """Whether frontdesk (or bolt itself) listens for this kind of request: events, its buttons
    (block_actions), its slash command, and Slack's URL and SSL checks. Shortcuts, views,
    dialogs and legacy attachment actions it does not."""
    kinds = ("event_callback", "block_actions", "url_verification")
    return body.get("type") in kinds or "command" in body or "ssl_check" in body


def readable(body: Any) -> bool:
    """Whether ``body`` (a signed request's, parsed) has the shape Slack gives its requests in
    the fields that bolt and frontdesk read."""
    if not isinstance(body, dict) or not _strings(body, BODY_STRINGS):
        return False
    if body.get("type") == "event_callback" or "event" in body:
        event = body.get("event")
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return False
        if event["type"] not in ("message", "app_mention"):
            return True  # acked and dropped: nothing of it is read
        return _strings(event, MESSAGE_STRINGS) and isinstance(event.get("files", []), list)
    # an interaction: a button pressed, a shortcut, a view submitted
    if not all(_object_with(body, key, field) for key, field in
               (("user", "id"), ("channel", "id"), ("team", "id"), ("message", "ts"),
                ("container", "type"))):  # fmt: skip
        return False
    actions = body.get("actions", [])
    if body.get("type") in ("block_actions", "interactive_message") and not actions:
        return False  # bolt reads the first action of these
    return isinstance(actions, list) and all(
        isinstance(action, dict)
        and _strings(action, ACTION_STRINGS)
        # bolt matches a button's listeners by its action_id, which Slack always sends
        and (body.get("type") != "block_actions" or isinstance(action.get("action_id"), str))
        for action in actions
    )
