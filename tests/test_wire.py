"""The queue's wire format across versions: what a delta carries, and what an older writer's means."""

from __future__ import annotations

import json

from frontdesk.wire import ReplyDelta, Turn, decode, encode


def test_a_delta_carries_its_attempt_but_not_the_gateways_restart_mark() -> None:
    sent = ReplyDelta("t1", 3, "hi", attempt=2, restart=True)
    fields = encode(sent)
    assert "restart" not in json.loads(fields["d"])
    assert decode(ReplyDelta, fields) == ReplyDelta("t1", 3, "hi", attempt=2)


def test_a_delta_from_an_older_worker_counts_as_the_first_attempt() -> None:
    old = {"turn_id": "t1", "seq": 0, "text": "x", "done": False, "error": None}
    assert decode(ReplyDelta, {"v": "1", "d": json.dumps(old)}).attempt == 1


def test_an_entry_written_now_is_read_by_the_standard_json_module_of_an_older_reader() -> None:
    """Entries are written by orjson: a gateway or worker of the version before, reading them
    with ``json`` during a rolling deploy, reads the same turn and delta (accents and emoji
    as written)."""
    turn = Turn(7, 42, gateway="gw-a", route={"chat_id": -100123, "thread": None}, user="t:9")
    delta = ReplyDelta("t1", 0, "Café ☕ — 👍", done=True, error=None)
    assert json.loads(encode(turn)["d"])["route"] == {"chat_id": -100123, "thread": None}
    assert json.loads(encode(delta)["d"])["text"] == "Café ☕ — 👍"
    for sent in (turn, delta):  # all of it, as an older reader's json reads it
        read = json.loads(encode(sent)["d"])
        assert decode(type(sent), {"v": "1", "d": json.dumps(read)}) == sent
    assert "Café ☕ — 👍" in encode(delta)["d"]  # UTF-8, not \u escapes
