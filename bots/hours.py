"""Desk hours (``FRONTDESK_DESK_HOURS``): when people are at the handoff desk, as weekdays and a
daily time range in the desk's time zone (``FRONTDESK_DESK_TIMEZONE``), like
``Mon-Fri 09:00-17:00``. Outside them a customer handed over is told when someone will answer,
and a handoff's claim timeout counts only from the desk's opening."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from frontdesk.errors import ConfigError

DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_SPEC = re.compile(
    r"^\s*(?P<first>[a-z]{3})(?:\s*-\s*(?P<last>[a-z]{3}))?\s+"
    r"(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*$"
)


@dataclass(frozen=True, slots=True)
class DeskHours:
    days: frozenset[int]  # 0 = Monday
    start: time
    end: time | None  # None: midnight at the end of the day
    zone: ZoneInfo
    text: str  # as configured, for the customer

    @classmethod
    def parse(cls, spec: str, zone: str = "UTC") -> DeskHours:
        """``Mon-Fri 09:00-17:00`` (or one day, ``Sat 10:00-14:00``; ``24:00`` ends a day)."""
        found = _SPEC.match(spec.lower())
        if found is None or found["first"] not in DAYS or (found["last"] or "mon") not in DAYS:
            raise ConfigError(
                f"FRONTDESK_DESK_HOURS={spec!r}: write days and hours, like Mon-Fri 09:00-17:00"
            )
        first = DAYS.index(found["first"])
        last = DAYS.index(found["last"]) if found["last"] else first
        days = frozenset((first + i) % 7 for i in range((last - first) % 7 + 1))
        try:
            start, end = _clock(found["start"]), _clock(found["end"])
            where = ZoneInfo(zone)
        except (ValueError, ZoneInfoNotFoundError) as exc:
            raise ConfigError(f"FRONTDESK_DESK_HOURS / FRONTDESK_DESK_TIMEZONE: {exc}") from None
        assert start is not None
        if end is not None and end <= start:
            raise ConfigError(f"FRONTDESK_DESK_HOURS={spec!r}: the day ends before it starts")
        return cls(days, start, end, where, f"{spec.strip()} ({zone})")

    def opened_at(self, now: datetime) -> datetime | None:
        """When the desk opened, if it is open at ``now`` (aware); None while it is closed."""
        local = now.astimezone(self.zone)
        if local.weekday() not in self.days:
            return None
        opening = datetime.combine(local.date(), self.start, self.zone)
        closing = (
            datetime.combine(local.date(), self.end, self.zone)
            if self.end is not None
            else datetime.combine(local.date() + timedelta(days=1), time(0), self.zone)
        )
        return opening if opening <= local < closing else None


def _clock(value: str) -> time | None:
    hours, minutes = (int(part) for part in value.split(":"))
    if (hours, minutes) == (24, 0):
        return None
    return time(hours, minutes)
