"""Properties of everything the admin CLI prints, over generated stored text and queries, on SQLite
and PostgreSQL:

- with ``--redact``, no output of ``list``, ``show``, ``search``, ``export`` or ``tail`` holds an
  e-mail address, a phone number or a Luhn-valid card number that was stored in a message, a
  display name, a chat or an error, whatever the query;
- no stored text and no query, Rich markup included, ends in a traceback in any command, and
  markup is printed as it was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from frontdesk.cli import app
from frontdesk.redact import redact
from frontdesk.storage import ReplyFigures, Store
from frontdesk.storage.cli.tail import _print_tail
from frontdesk.storage.logs import LogFilter, Logs
from frontdesk.wire import InboundMessage

runner = CliRunner()
_migrated: set[str] = set()


def _luhn_complete(digits: list[int]) -> str:
    """``digits`` plus the check digit that makes them pass the Luhn check."""
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = d * 2 if i % 2 == 0 else d
        total += n - 9 if n > 9 else n
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


def _grouped(number: str, sep: str, size: int = 4) -> str:
    return sep.join(number[i : i + size] for i in range(0, len(number), size))


emails = st.builds(
    "{}@{}.{}".format,
    st.from_regex(r"[a-z][a-z0-9._+-]{0,10}[a-z0-9]", fullmatch=True),
    st.from_regex(r"[a-z][a-z0-9-]{0,8}[a-z]", fullmatch=True),
    st.sampled_from(["com", "org", "nl", "co.uk"]),
)
cards = st.builds(
    lambda digits, sep: _grouped(_luhn_complete([4, *digits]), sep),
    st.lists(st.integers(0, 9), min_size=11, max_size=17),
    st.sampled_from(["", " ", "-"]),
)
phones = st.one_of(
    st.builds(
        "+{} {} {} {}".format,
        st.integers(1, 99),
        st.integers(10, 99),
        st.integers(100, 999),
        st.integers(1000, 9999),
    ),
    st.builds(
        "0{}{}".format,
        st.sampled_from(["20 ", "6-", "(20) ", "30-"]),
        st.from_regex(r"[1-9][0-9]{7}", fullmatch=True),
    ),
)
personal = st.one_of(emails, cards, phones)
around = st.text(max_size=40)  # anything at all, on the lines around it


def _seed(url: str, platform: str, content: str, name: str, chat: str, error: str) -> int:
    """One conversation: a user message and a failed reply, stored as the gateway would."""

    async def go() -> int:
        store = Store(url, pool_size=1)
        await store.start(migrate=url not in _migrated)
        _migrated.add(url)
        try:
            msg = InboundMessage(platform, chat, "u-1", uuid.uuid4().hex, content, name)
            recorded = await store.record_user_message(msg)
            assert recorded is not None
            figures = ReplyFigures()
            await store.record_reply(
                recorded.conversation_id, recorded.message_id, "", figures, error=error
            )
            return recorded.conversation_id
        finally:
            await store.stop()

    return asyncio.run(go())


def _tail(url: str, platform: str, redacting: bool) -> str:
    """What ``tail`` prints for these messages, in both its forms."""

    async def go() -> str:
        async with Store(url, pool_size=1) as store:
            messages = await Logs(store).messages_after(0, LogFilter(platform=platform))
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            for m in messages:
                for as_json in (False, True):
                    _print_tail(m, redact if redacting else (lambda t: t), as_json)
        return printed.getvalue()

    return asyncio.run(go())


def _outputs(
    url: str, platform: str, conv: int, query: str, *flags: str, only: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Each command's output over this conversation (those named in ``only``, or all):
    name -> CliRunner result. ``flags`` go to every command that shows text."""
    env = {"FRONTDESK_DATABASE_URL": url, "COLUMNS": "5000"}  # wide: no cell wraps
    where = ["--platform", platform, *flags]
    commands = {
        "list --json": ["conversations", "list", *where, "--json"],
        "list": ["conversations", "list", *where],
        "show --json": ["conversations", "show", str(conv), *flags, "--json"],
        "show": ["conversations", "show", str(conv), *flags],
        "show markdown": ["conversations", "show", str(conv), *flags, "--format", "markdown"],
        "search --json": ["search", *where, "--json", "--", query],  # "--": "-x" is a word
        "search": ["search", *where, "--", query],
        "export": ["export", *where],
        "export csv": ["export", *where, "--format", "csv"],
        "export json": ["export", *where, "--format", "json"],
        "stats": ["stats", "--platform", platform],
    }
    return {
        name: runner.invoke(app, args, env=env)
        for name, args in commands.items()
        if not only or name in only
    }


PROPERTY = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@PROPERTY
@given(data=st.data(), pii=personal, before=around, after=around, free_query=st.text(max_size=20))
def test_redacted_output_never_holds_the_personal_data_that_was_stored(
    database_url: str, data: st.DataObject, pii: str, before: str, after: str, free_query: str
) -> None:
    platform = "p" + uuid.uuid4().hex[:10]
    content = f"{before}\n{pii}\n{after}".replace("\x00", "")
    conv = _seed(
        database_url,
        platform,
        content=content,
        name=f"Ann {pii}",
        chat=f"chat {pii}",
        error=f"the engine said {pii}",
    )
    words = [w for w in pii.replace("@", " ").replace(".", " ").split() if w]
    query = data.draw(st.sampled_from([*words, pii, free_query]), label="query")
    outputs = _outputs(database_url, platform, conv, query, "--redact")
    for name, result in outputs.items():
        assert result.exception is None and result.exit_code == 0, (name, result.output)
        assert pii not in result.output, name
    assert pii not in _tail(database_url, platform, redacting=True)
    # without --redact the same outputs do show it: the check above could fail
    plain = _outputs(database_url, platform, conv, query, only=("show --json", "export"))
    assert pii in json.loads(plain["show --json"].stdout)["messages"][0]["content"]
    assert pii in plain["export"].stdout and pii in _tail(database_url, platform, False)


markup = st.one_of(
    st.text(max_size=30),
    st.from_regex(r"\[/?[a-z #/@]{0,12}\]", fullmatch=True),
    st.sampled_from(["[/x]", "[bold]", "[/]", "[link=x]y[/link]", ":smile:", "\\", "[[", "]]"]),
)


@PROPERTY
@given(parts=st.lists(markup, min_size=1, max_size=4), query=st.one_of(markup, st.text()))
def test_no_stored_text_and_no_query_ends_in_a_traceback(
    database_url: str, parts: list[str], query: str
) -> None:
    platform = "p" + uuid.uuid4().hex[:10]
    text = " ".join(parts).replace("\x00", "") or "[/x]"
    conv = _seed(database_url, platform, content=text, name=text[:200], chat=text, error=text)
    for flags in ((), ("--redact",)):
        for name, result in _outputs(database_url, platform, conv, query, *flags).items():
            assert result.exception is None, (name, flags, result.exception)
            assert result.exit_code == 0, (name, flags, result.output)
            assert "Traceback" not in result.output
    _tail(database_url, platform, redacting=False)


def test_markup_in_stored_text_is_printed_as_written(database_url: str) -> None:
    platform = "p" + uuid.uuid4().hex[:10]
    text = "[bold]not bold[/bold] [/x] [red]:smile:"
    conv = _seed(database_url, platform, content=text, name="[/x]", chat="c", error="[/]")
    outputs = _outputs(database_url, platform, conv, "[/x] bold")
    assert text in outputs["show"].stdout and "[/x]" in outputs["list"].stdout
    assert "[bold]not bold[/bold]" in outputs["search"].stdout
    assert text in _tail(database_url, platform, redacting=False)
    missing = runner.invoke(
        app,
        ["search", "[/x]", "--platform", platform + "-none"],
        env={"FRONTDESK_DATABASE_URL": database_url},
    )
    assert missing.exit_code == 0 and "no messages match '[/x]'" in missing.output
