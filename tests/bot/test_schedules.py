"""When a show is next due, and how its time and day are read: the pure part of schedules."""

from __future__ import annotations

from datetime import UTC, datetime, time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.errors import InputError
from bot.schedules import Cadence, next_slot, parse_clock, parse_weekday

FRIDAY = 4


def test_a_daily_slot_is_today_if_its_time_is_still_to_come_else_tomorrow():
    morning = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
    assert next_slot(Cadence.DAILY, time(18, 0), None, morning) == datetime(2026, 11, 27, 18, 0, tzinfo=UTC)
    evening = datetime(2026, 11, 27, 18, 0, tzinfo=UTC)  # exactly at the slot: that one is taken
    assert next_slot(Cadence.DAILY, time(18, 0), None, evening) == datetime(2026, 11, 28, 18, 0, tzinfo=UTC)


def test_a_weekly_slot_falls_on_its_weekday():
    friday = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)  # a Friday, after the slot
    following = next_slot(Cadence.WEEKLY, time(9, 30), FRIDAY, friday)
    assert following == datetime(2026, 12, 4, 9, 30, tzinfo=UTC) and following.weekday() == FRIDAY


@given(
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
    st.sampled_from(list(Cadence)),
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(0, 6),
)
def test_the_next_slot_is_the_first_one_after_now(after, cadence, hour, minute, day):
    weekday = day if cadence is Cadence.WEEKLY else None
    slot = next_slot(cadence, time(hour, minute), weekday, after)
    span = 7 if cadence is Cadence.WEEKLY else 1
    assert after < slot and (slot - after).total_seconds() <= span * 86400
    assert (slot.hour, slot.minute, slot.second) == (hour, minute, 0)
    assert weekday is None or slot.weekday() == weekday


@pytest.mark.parametrize(
    ("text", "wanted"), [("18:00", time(18)), ("7:05", time(7, 5)), (" 23:59 ", time(23, 59))]
)
def test_times_of_day_are_read_as_hh_mm(text, wanted):
    assert parse_clock(text) == wanted


@pytest.mark.parametrize("text", ["24:00", "18", "6pm", "18:60", ""])
def test_other_times_are_refused_with_the_form_to_use(text):
    with pytest.raises(InputError, match="write it as HH:MM in UTC"):
        parse_clock(text)


def test_weekdays_are_read_from_a_prefix_and_only_weekly_shows_have_one():
    assert parse_weekday(Cadence.WEEKLY, "Fri") == FRIDAY
    assert parse_weekday(Cadence.DAILY, None) is None
    with pytest.raises(InputError, match="not a weekday"):
        parse_weekday(Cadence.WEEKLY, "t")  # tuesday or thursday?
    with pytest.raises(InputError, match="needs its weekday"):
        parse_weekday(Cadence.WEEKLY, None)
    with pytest.raises(InputError, match="runs every day"):
        parse_weekday(Cadence.DAILY, "monday")
