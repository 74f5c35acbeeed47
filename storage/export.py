"""Writes exported messages as JSON Lines, CSV or one JSON array: a batch at a time as rows stream
from the database, so an export of millions of messages runs in constant memory.
"""

from __future__ import annotations

import asyncio
import csv
import enum
import functools
import io
import json
import math
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from frontdesk.redact import FREE_TEXT, unchanged

from .logs import EXPORT_COLUMNS, LogFilter, Logs


class ExportFormat(enum.StrEnum):
    jsonl = "jsonl"
    csv = "csv"
    json = "json"


async def write_export(
    logs: Logs,
    filt: LogFilter,
    fmt: ExportFormat,
    shown: Callable[[str], str],
    stream: TextIO,
    progress: Callable[[int], None] | None,
) -> int:
    """Write rows as they stream from the database, a batch at a time; returns how many."""
    # every free-text column: the text, the user's name, the chat, the error. A name and a chat
    # repeat on every row of their conversation, so their masks are remembered.
    free = [] if shown is unchanged else [i for i, n in enumerate(EXPORT_COLUMNS) if n in FREE_TEXT]
    repeating = functools.lru_cache(maxsize=65_536)(shown)
    masks = [repeating if EXPORT_COLUMNS[i] in ("user_name", "chat") else shown for i in free]
    created = EXPORT_COLUMNS.index("created_at")
    if fmt is ExportFormat.csv:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(EXPORT_COLUMNS)
    elif fmt is ExportFormat.json:
        stream.write("[")
    count = 0
    async for batch in logs.export_batches(filt):
        lines = []
        for row in batch:
            values = list(row)
            for i, mask in zip(free, masks, strict=True):
                if values[i] is not None:
                    values[i] = mask(values[i])
            values[created] = values[created].isoformat()  # stored in UTC
            lines.append(values)
        if fmt is ExportFormat.csv:
            writer.writerows(lines)
            stream.write(buffer.getvalue())
            buffer.seek(0)
            buffer.truncate()
        else:
            objects = [json_object(values) for values in lines]
            if fmt is ExportFormat.jsonl:
                stream.write("\n".join(objects) + "\n")
            else:
                stream.write(("," if count else "") + "\n" + ",\n".join(objects))
        count += len(batch)
        if progress is not None:
            progress(count)
        await asyncio.sleep(0)
    if fmt is ExportFormat.json:
        stream.write("\n]\n" if count else "]\n")
    stream.flush()
    return count


_JSON_KEYS = [json.dumps(name) + ": " for name in EXPORT_COLUMNS]


def json_object(values: Sequence[Any]) -> str:
    """One row as a JSON object (what json.dumps writes, several times faster: a million
    rows spend most of their export time here)."""
    parts = []
    for key, value in zip(_JSON_KEYS, values, strict=True):
        if value is None:
            parts.append(key + "null")
        elif isinstance(value, str):
            parts.append(key + _quote(value))
        elif isinstance(value, bool):
            parts.append(key + ("true" if value else "false"))
        elif isinstance(value, int):
            parts.append(key + str(value))
        elif isinstance(value, float) and math.isfinite(value):
            parts.append(key + repr(value))
        else:
            parts.append(key + json.dumps(value))  # NaN and infinities as json writes them
    return "{" + ", ".join(parts) + "}"


_quote = json.encoder.encode_basestring
