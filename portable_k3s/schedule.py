"""Cron schedules as Kubernetes CronJobs read them: five fields (minute hour day-of-month month day-of-week), with
``*``, ranges, steps, lists and English names, or a macro (``@hourly``, ``@daily`` …).

``cron_problem`` says what is wrong with one; ``longest_gap`` is the most time that can pass between two runs (how
old the newest backup may get before it is late).
"""

from __future__ import annotations

from datetime import date, timedelta

MACROS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}
FIELDS = (  # name, lowest, highest, names for the values from lowest on
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")),
    ("day of week", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)


class CronError(ValueError):
    """A schedule that is not a cron expression; the message says which field and why."""


def _value(text: str, low: int, names: tuple[str, ...]) -> int:
    if text.lower() in names:
        return low + names.index(text.lower())
    if not text.isdigit():
        raise CronError(f"{text!r} is not a number{' or a name like ' + names[0] if names else ''}")
    return int(text)


def _field(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> set[int]:
    found: set[int] = set()
    for part in text.split(","):
        span, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{name}: step {step_text!r} is not a positive number")
            step = int(step_text)
        if span == "*":
            first, last = low, high
        elif "-" in span:
            first_text, _, last_text = span.partition("-")
            first, last = _value(first_text, low, names), _value(last_text, low, names)
        else:
            first = _value(span, low, names)
            last = high if step_text else first
        if not (low <= first <= high and low <= last <= high):
            raise CronError(f"{name}: {span!r} is outside {low}-{high}")
        if first > last:
            raise CronError(f"{name}: the range {span!r} runs backwards")
        found.update(range(first, last + 1, step))
    return found


def parse(schedule: str) -> tuple[set[int], set[int], set[int], set[int], set[int], bool, bool]:
    """The minutes, hours, days of month, months and days of week (0 = Sunday) ``schedule`` runs at, and whether
    the day-of-month and day-of-week fields were restricted (cron runs on a day either matches when both are)."""
    if not isinstance(schedule, str):
        raise CronError(f"{type(schedule).__name__} is not a text")
    text = MACROS.get(schedule.strip(), schedule)
    parts = text.split()
    if len(parts) != 5:
        raise CronError(f"{len(parts)} fields instead of 5 (minute hour day-of-month month day-of-week)")
    minutes, hours, days, months, weekdays = (
        _field(part, *spec) for part, spec in zip(parts, FIELDS, strict=True))
    weekdays = {day % 7 for day in weekdays}
    return minutes, hours, days, months, weekdays, parts[2] != "*", parts[4] != "*"


def cron_problem(schedule: object) -> str | None:
    """Why ``schedule`` is not a cron schedule, or None when it is one."""
    try:
        parse(schedule)  # type: ignore[arg-type]
    except CronError as error:
        return str(error)
    if not run_days(schedule, date(2024, 1, 1), CYCLE_DAYS):  # type: ignore[arg-type]
        return "it never runs (no such day)"
    return None


CYCLE_DAYS = 8 * 366  # the calendar's days of month and of week repeat within this, leap days included


def run_days(schedule: str, start: date, days: int) -> list[date]:
    """The days ``schedule`` runs on among the ``days`` days from ``start``."""
    _minutes, _hours, month_days, months, weekdays, dom_set, dow_set = parse(schedule)
    found: list[date] = []
    for offset in range(days):
        day = start + timedelta(days=offset)
        by_month_day = day.day in month_days
        by_weekday = (day.isoweekday() % 7) in weekdays
        if day.month in months and ((by_month_day or by_weekday) if dom_set and dow_set
                                    else (by_month_day and by_weekday)):
            found.append(day)
    return found


def longest_gap(schedule: str) -> timedelta:
    """The longest time between two runs of ``schedule``."""
    minutes, hours = parse(schedule)[:2]
    times = [timedelta(hours=h, minutes=m) for h in sorted(hours) for m in sorted(minutes)]
    within = max((b - a for a, b in zip(times, times[1:], strict=False)), default=timedelta(0))
    days = run_days(schedule, date(2024, 1, 1), CYCLE_DAYS)
    across = max((timedelta(days=(b - a).days) - times[-1] + times[0] for a, b in zip(days, days[1:], strict=False)),
                 default=timedelta(days=CYCLE_DAYS))
    return max(within, across)
