"""Desk hours: which moments are inside ``Mon-Fri 09:00-17:00`` in the desk's time zone, and a
spec that cannot be read is one clear configuration error."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from frontdesk.bots.hours import DeskHours
from frontdesk.errors import ConfigError


def test_weekdays_and_hours_in_the_desks_time_zone() -> None:
    hours = DeskHours.parse("Mon-Fri 09:00-17:00", "Europe/Berlin")
    # Wednesday 2026-12-02: 08:30 UTC is 09:30 in Berlin (open since 09:00 Berlin)
    opened = hours.opened_at(datetime(2026, 12, 2, 8, 30, tzinfo=UTC))
    assert opened is not None and opened.astimezone(UTC) == datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
    assert hours.opened_at(datetime(2026, 12, 2, 7, 30, tzinfo=UTC)) is None  # 08:30 Berlin
    assert hours.opened_at(datetime(2026, 12, 2, 16, 0, tzinfo=UTC)) is None  # 17:00: closed
    assert hours.opened_at(datetime(2026, 12, 5, 10, 0, tzinfo=UTC)) is None  # a Saturday
    weekend = DeskHours.parse("Fri-Mon 00:00-24:00")  # wraps the week, to midnight
    assert weekend.opened_at(datetime(2026, 12, 6, 23, 59, tzinfo=UTC)) is not None  # Sunday
    assert weekend.opened_at(datetime(2026, 12, 2, 12, 0, tzinfo=UTC)) is None  # Wednesday


@pytest.mark.parametrize(
    "spec", ["weekdays 9-5", "Mon-Fri 17:00-09:00", "Mon-Fri 25:00-26:00", "Xyz 09:00-10:00"]
)
def test_a_spec_that_cannot_be_read_is_a_config_error(spec: str) -> None:
    with pytest.raises(ConfigError, match="FRONTDESK_DESK_HOURS"):
        DeskHours.parse(spec)


def test_an_unknown_time_zone_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="FRONTDESK_DESK_TIMEZONE"):
        DeskHours.parse("Mon-Fri 09:00-17:00", "Mars/Olympus")
