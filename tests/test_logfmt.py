"""Log lines as the README says: JSON when stderr is not a terminal, readable lines on one, each
carrying the turn it was written in."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

LOG_ONE = """
from frontdesk import logfmt
import logging
logfmt.configure("INFO")
with logfmt.turn_scope("m7", 7, "telegram"):
    logging.getLogger("frontdesk.test").warning("inside")
logging.getLogger("frontdesk.test").warning("outside")
"""


def test_lines_are_json_off_a_terminal() -> None:
    done = subprocess.run([sys.executable, "-c", LOG_ONE], capture_output=True, text=True)
    inside, outside = (json.loads(line) for line in done.stderr.splitlines())
    assert inside["message"] == "inside" and inside["level"] == "WARNING"
    assert (inside["turn_id"], inside["conversation_id"], inside["platform"]) == (
        "m7",
        7,
        "telegram",
    )
    assert outside["message"] == "outside" and "turn_id" not in outside


def test_lines_are_readable_on_a_terminal() -> None:
    main, side = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-c", LOG_ONE], stderr=side, timeout=60)
        assert done.returncode == 0
        os.close(side)
        side = -1
        written = b""
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            written += chunk
    finally:
        os.close(main)
        if side != -1:
            os.close(side)
    lines = written.decode().splitlines()
    assert len(lines) == 2 and not lines[0].startswith("{")
    assert lines[0].endswith("WARNING frontdesk.test: inside [turn m7]")
    assert lines[1].endswith("WARNING frontdesk.test: outside")
