"""The queue's wire format across versions: what a delta carries, and what an older writer's means."""

from __future__ import annotations

import json

from frontdesk.wire import ReplyDelta, decode, encode


def test_a_delta_carries_its_attempt_but_not_the_gateways_restart_mark() -> None:
    sent = ReplyDelta("t1", 3, "hi", attempt=2, restart=True)
    fields = encode(sent)
    assert "restart" not in json.loads(fields["d"])
    assert decode(ReplyDelta, fields) == ReplyDelta("t1", 3, "hi", attempt=2)


def test_a_delta_from_an_older_worker_counts_as_the_first_attempt() -> None:
    old = {"turn_id": "t1", "seq": 0, "text": "x", "done": False, "error": None}
    assert decode(ReplyDelta, {"v": "1", "d": json.dumps(old)}).attempt == 1
