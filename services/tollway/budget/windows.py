"""Window arithmetic: which calendar bucket (UTC) a moment falls in, and when it ends.

Windows are fixed calendar periods, not sliding ones: every replica computes the same
bucket from the same clock reading, and a bucket is one counter in Redis.
"""

from __future__ import annotations

import datetime as dt

from tollway.budget.types import Window

_SECONDS = {Window.MINUTE: 60, Window.HOUR: 3600, Window.DAY: 86400}


def bucket(window: Window, now_ms: int) -> tuple[int, int]:
    """The bucket of ``window`` holding ``now_ms``, as ``(start_s, end_s)`` Unix seconds.

    The end is exclusive: at ``end_s`` the next bucket starts. A conversation has no
    calendar bucket and returns ``(0, 0)``.

    Raises:
        ValueError: ``now_ms`` is negative.
    """
    if now_ms < 0:
        raise ValueError(f"now_ms {now_ms} is before 1970")
    if window is Window.CONVERSATION:
        return (0, 0)
    now_s = now_ms // 1000
    if window in _SECONDS:
        size = _SECONDS[window]
        start = now_s - now_s % size
        return (start, start + size)
    day = dt.datetime.fromtimestamp(now_s, tz=dt.UTC)
    first = dt.datetime(day.year, day.month, 1, tzinfo=dt.UTC)
    following = dt.datetime(day.year + (day.month == 12), day.month % 12 + 1, 1, tzinfo=dt.UTC)
    return (int(first.timestamp()), int(following.timestamp()))


def day_of(now_ms: int) -> str:
    """The UTC date of ``now_ms``, ``YYYY-MM-DD`` (usage is kept per day)."""
    return dt.datetime.fromtimestamp(now_ms // 1000, tz=dt.UTC).strftime("%Y-%m-%d")


def parse_date(text: str) -> dt.date:
    """``YYYY-MM-DD`` as a date.

    Raises:
        ValueError: The text is not such a date; the message quotes it.
    """
    # fromisoformat alone would also take "20261123" and week dates.
    try:
        if len(text) == 10 and text[4] == text[7] == "-":
            return dt.date.fromisoformat(text)
    except ValueError:
        pass
    raise ValueError(f"{text!r} is not a date of the form YYYY-MM-DD")


def days(start: dt.date, end: dt.date) -> list[str]:
    """Every date from ``start`` to ``end`` included, ``YYYY-MM-DD``."""
    count = (end - start).days + 1
    return [(start + dt.timedelta(days=i)).isoformat() for i in range(max(0, count))]
