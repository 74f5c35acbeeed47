"""Markdown to Slack mrkdwn (through ``slackify-markdown``), and the length of a reply as Slack
will count it: after conversion."""

from __future__ import annotations

import functools

from slackify_markdown import slackify_markdown


@functools.lru_cache(maxsize=256)  # a streaming reply converts the same parts repeatedly
def to_mrkdwn(markdown: str) -> str:
    """The model's Markdown as Slack mrkdwn: bold, italics, code, links and lists."""
    return slackify_markdown(markdown).rstrip("\n")


def mrkdwn_len(markdown: str) -> int:
    """How many characters ``markdown`` takes once converted."""
    return len(to_mrkdwn(markdown))
