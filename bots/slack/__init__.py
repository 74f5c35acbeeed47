"""The Slack channel: slack-bolt's ``AsyncApp`` inside the gateway's event loop.

Events arrive over Socket Mode when ``FRONTDESK_SLACK_APP_TOKEN`` is set, and otherwise as HTTP
posts to ``/slack/events`` on the gateway's HTTP server, where bolt checks every request's
signature and timestamp (401 when either is wrong). Bolt runs with ``process_before_response``:
the message is stored and queued before the ack goes back, and nothing is generated before it.

Who gets answered: direct messages, @mentions in channels, and follow-ups in a thread the bot
is in. A reply goes in the thread of the message it answers. In a channel a thread is one
conversation (team, channel, thread); a DM is one conversation until the user says "reset".
Bots (this one included), edits and deletions get no reply. A retried event gets no second reply:
its event id is remembered here, and its message's key (channel + ts) in storage, which also
survives a restart.

A reply streams into a placeholder, then grows by ``chat.update``. Updates are Tier 3 (about 50 a
minute for the whole app), so the channel keeps one app-wide budget: a streaming reply gets an
interim update only while room remains for the final update of every reply still streaming, and
final updates queue for room. Each message is updated at most every ``FRONTDESK_SLACK_EDIT_
INTERVAL``, each channel gets at most one new message a second, and a 429 is waited out and
retried, so no reply is lost. Text is converted from Markdown to mrkdwn and sent as ``text`` (no
blocks), at most 4,000 characters a message; longer replies continue in new messages.
"""

from .channel import SlackChannel

__all__ = ["SlackChannel"]
