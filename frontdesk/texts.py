"""What frontdesk itself says in a chat: greetings, help, and the polite sentences that stand in for
errors. One place, so every channel says the same thing."""

import math

HELP = (
    "I'm a chat assistant. Send me a message and I'll answer.\n"
    "/reset starts a new conversation, /stop stops an answer in progress, /human asks for a "
    "person, /help shows this."
)
RESET = "Started a new conversation. Earlier messages no longer count."
EMPTY_MESSAGE = "Your message is empty. Send me some text and I'll answer."
STOPPED = "(stopped)"
NOTHING_TO_STOP = "There is no answer in progress to stop."
NON_TEXT = "I can only read text for now."
NOT_ALLOWED = "Sorry, I'm not available to you here. Ask the bot's owner for access."
UNKNOWN_COMMAND = "I don't know that command. /help lists what I understand."
QUEUE_DOWN = "I can't take messages right now. Please try again in a minute."
STORAGE_DOWN = "I can't save messages right now, so I didn't take this one. Please try again soon."
ANSWERING_AGAIN = "(Something went wrong on my side. Answering again:)"
RESUMING = "(Picking up where the reply was cut off; here it is again, whole:)"
ENGINE_FAILED = "Sorry, something went wrong while I was answering. Please try again."
GAVE_UP = "Sorry, I couldn't answer that message after several tries. Please try again later."
EMPTY_REPLY = "Sorry, I have no answer to that. Could you rephrase it?"
TIMED_OUT = "Sorry, I took too long to answer. Please try again."


BUSY = "We're busy right now, please try again in a minute."


def slow_down(wait_s: float) -> str:
    """A user over ``FRONTDESK_USER_RATE``: when they can go on."""
    seconds = max(1, math.ceil(wait_s))
    when = f"{seconds} seconds" if seconds < 120 else f"{math.ceil(seconds / 60)} minutes"
    return f"You're sending messages faster than I can answer. Please send that again in {when}."


def out_of_budget(seconds: float) -> str:
    """A user past ``FRONTDESK_USER_DAILY_TOKENS``: when the budget starts again."""
    hours = int(seconds // 3600)
    when = f"{hours} hours" if hours > 1 else f"{max(1, math.ceil(seconds / 60))} minutes"
    return (
        "You've reached today's limit for answers. It starts again at midnight UTC, "
        f"in about {when}."
    )


def too_long(length: int, limit: int) -> str:
    return (
        f"Your message is too long for me ({length:,} characters; I can read {limit:,}). "
        "Please shorten it or split it up."
    )


PROMPT_TOO_LONG = "That message is too long for me to read at once. Please shorten it."
NOT_COVERED = (
    "Sorry, our help centre doesn't cover that, so I'd rather not guess. "
    "Could you put it another way?"
)
SOURCES = "Sources"  # before the list of help-centre articles a reply was given

# handoff to a person (bots/desk.py)
HANDED_OVER = "I've asked a person from our team to take over. They'll answer you right here."


def handed_over_after_hours(hours: str) -> str:
    return (
        f"I've asked a person from our team to take over. Our team is here {hours}: someone "
        "will answer you right here then."
    )


HANDOFF_ALREADY = "A person from our team has your conversation; they'll answer you right here."
NOBODY_AVAILABLE = "Sorry, nobody from our team is available right now. I'll keep helping you."
BOT_IS_BACK = "You're back with the assistant. Ask me anything, or send /human for a person."
NOBODY_CLAIMED = (
    "Sorry, nobody from our team could take your conversation in time. I'm back to help you; "
    'write "human" to try again.'
)
NOT_HANDED_OVER = "You're talking with the assistant already."
OFFER_PERSON = 'Or write "human" to reach a person from our team.'
TAKEN_OVER = "A person from our team is answering here now; I'll stay quiet until they resolve it."
TAKEOVER_RESOLVED = "Resolved: the assistant answers in this thread again."
HANDOFF_OVER = "This handoff is resolved: the customer is back with the bot."

# ratings of answers (the 👍 and 👎 under each)
RATED = "Thanks for the feedback!"
RATING_GONE = "That answer is no longer available to rate."
