"""Every value a user hands conveyor is checked here, once, the same way for
every store and for the command line.

Each check takes the option's name (as the caller spelled it: ``delay`` in
Python, ``--delay`` on the command line) and the value, and either returns
the value in its normal form or raises ``ConfigurationError`` with one line
that names the option and the value. Nothing is stored before these pass.

Names. A **queue name** is 1 to 128 ASCII letters, digits, ``_``, ``-``, ``.``
or ``:``: it becomes part of store keys (on Redis, the ``{queue}`` hash tag),
URLs and command lines, so braces, slashes, spaces and control characters are
out. A **job id** and a **task name** are 1 to 255 printable characters
(``str.isprintable``: any language's letters, digits, punctuation, symbols and
the plain space; no control, format, surrogate or other whitespace
characters, so an id is always one line in a log and valid UTF-8 in a store).

>>> queue_name("queue", "emails.high")
'emails.high'
>>> seconds("delay", 2)
2.0
"""

from __future__ import annotations

import math
import numbers
import re
import reprlib
from collections.abc import Callable
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

from conveyor.brokers.base import RateLimit
from conveyor.errors import ConfigurationError

MAX_QUEUE_NAME = 128
MAX_NAME = 255  # job ids and task names
#: The longest span of seconds conveyor takes anywhere (a delay, a timeout,
#: a backoff, a retention period): 100 years. Longer is a mistake (a
#: timestamp in milliseconds, say), and it keeps every time a finite float.
MAX_SECONDS = 100 * 365 * 24 * 3600.0
#: Priorities fit in 32 bits: exact as a SQLite integer and as a Redis score.
MIN_PRIORITY, MAX_PRIORITY = -(2**31), 2**31 - 1
MAX_ATTEMPTS = 1_000  # each failed run keeps its error and traceback

_QUEUE_NAME = re.compile(rf"[A-Za-z0-9_.:-]{{1,{MAX_QUEUE_NAME}}}")
_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60
_short.maxlist = _short.maxtuple = _short.maxdict = _short.maxset = 4


def shown(value: Any) -> str:
    """A value as it appears in an error: its repr, kept to one short line."""
    try:
        return _short.repr(value)
    except Exception:  # a value whose repr fails still gets a readable error
        return f"<{type(value).__name__} object>"


def refuse(option: str, wanted: str, value: Any) -> NoReturn:
    raise ConfigurationError(f"{option} must be {wanted}, not {shown(value)}")


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# -- names --------------------------------------------------------------


def queue_name(option: str, value: Any) -> str:
    if type(value) is not str or not _QUEUE_NAME.fullmatch(value):
        refuse(
            option,
            f"a queue name: 1 to {MAX_QUEUE_NAME} letters, digits, '_', '-', '.' or ':'",
            value,
        )
    return value


def _printable_name(option: str, value: Any, what: str) -> str:
    if type(value) is not str or not 0 < len(value) <= MAX_NAME or not value.isprintable():
        refuse(
            option,
            f"{what}: 1 to {MAX_NAME} printable characters (no newline, tab or control characters)",
            value,
        )
    return value


def job_id(option: str, value: Any) -> str:
    return _printable_name(option, value, "a job id")


def task_name(option: str, value: Any) -> str:
    return _printable_name(option, value, "a task name")


# -- numbers ------------------------------------------------------------


def whole_number(option: str, value: Any, low: int, high: int) -> int:
    """An integer from ``low`` to ``high`` (bool is not a number here)."""
    if (
        not isinstance(value, numbers.Integral)
        or isinstance(value, bool)
        or not (low <= int(value) <= high)
    ):
        refuse(option, f"a whole number from {low:,} to {high:,}", value)
    return int(value)


def seconds(option: str, value: Any, *, positive: bool = False, at_least: float = 0.0) -> float:
    """A finite number of seconds from ``at_least`` (or above 0 with
    ``positive``) to ``MAX_SECONDS``. NaN and infinities are refused: a
    NaN delay would run at once, an infinite one never."""
    if (
        not _is_real(value)
        or not math.isfinite(value)
        or not ((value > 0 if positive else True) and at_least <= value <= MAX_SECONDS)
    ):
        low = "above 0" if positive and not at_least else f"from {at_least:g}"
        refuse(option, f"a number of seconds {low}, up to 100 years", value)
    return float(value)


def optional(check: Callable[..., Any], option: str, value: Any, **limits: Any) -> Any:
    """``check`` unless the value is None (not set)."""
    return None if value is None else check(option, value, **limits)


# -- job options --------------------------------------------------------


def priority(option: str, value: Any) -> int:
    return whole_number(option, value, MIN_PRIORITY, MAX_PRIORITY)


def attempts(option: str, value: Any) -> int:
    return whole_number(option, value, 1, MAX_ATTEMPTS)


def timeout(option: str, value: Any) -> float:
    return seconds(option, value, positive=True)


def unique_for(option: str, value: Any) -> float:
    """How long a unique job's key stays held after the job ended: above 0.
    0 is refused, not read as "not unique": whoever wrote it meant something."""
    return seconds(option, value, positive=True)


def jitter(option: str, value: Any) -> float:
    if value is True:
        return 1.0
    if not _is_real(value) or not 0.0 <= value <= 1.0:  # NaN fails both comparisons
        refuse(option, "a share from 0 to 1 (or True for 1)", value)
    return float(value)


def backoff(option: str, value: Any, kinds: tuple[str, ...], allow_callable: bool) -> Any:
    if callable(value) and allow_callable:
        return value
    if value not in kinds or type(value) is not str:
        also = " or a callable f(n) -> seconds" if allow_callable else ""
        refuse(option, f"one of {', '.join(kinds)}{also}", value)
    return value


# -- worker settings ----------------------------------------------------

MAX_CONCURRENCY = 10_000
MIN_LEASE = 0.1  # seconds: a lease renewed every lease / 3 must outlast a round trip
MIN_POLL = 0.01  # seconds: an idle worker polling faster than this only burns CPU


def concurrency(option: str, value: Any) -> int:
    return whole_number(option, value, 1, MAX_CONCURRENCY)


def lease(option: str, value: Any) -> float:
    return seconds(option, value, at_least=MIN_LEASE)


def poll(option: str, value: Any) -> float:
    return seconds(option, value, at_least=MIN_POLL)


def grace(option: str, value: Any) -> float:
    return seconds(option, value)


def max_stalled(option: str, value: Any) -> int:
    return whole_number(option, value, 0, MAX_ATTEMPTS)


def max_abandoned_threads(option: str, value: Any) -> int:
    return whole_number(option, value, 0, MAX_CONCURRENCY)


def queue_list(option: str, names: Any) -> list[str]:
    """A worker's queues: at least one, each a queue name, each once, in order."""
    if isinstance(names, str) or not isinstance(names, list | tuple):
        refuse(option, "a list of queue names", names)
    if not names:
        refuse(option, "at least one queue name", names)
    return list(dict.fromkeys(queue_name(option, name) for name in names))


# -- flow control -------------------------------------------------------

#: The most starts a rate limit may allow in one window: each start in it is
#: kept until it leaves the window (a sliding window is a log of starts).
MAX_RATE = 1_000_000
#: The most jobs of a queue a concurrency cap may allow at once.
MAX_QUEUE_CONCURRENCY = 1_000_000
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"(\d{1,20})/(\d{1,9}(?:\.\d{1,9})?)?([smh])")


def rate_limit(option: str, value: Any) -> RateLimit:
    """``"N/s"``, ``"N/m"``, ``"N/h"``, or with a number of units:
    ``"N/5s"``, ``"N/0.5m"``: at most N job starts in any window that long.

    >>> rate_limit("rate_limit", "10/m")
    RateLimit(limit=10, period=60.0)
    >>> rate_limit("rate_limit", "3/1.5s")
    RateLimit(limit=3, period=1.5)
    """
    match = _RATE.fullmatch(value) if type(value) is str else None
    if match is not None:
        count, units, unit = match.groups()
        limit = int(count)
        period = float(units or 1) * _UNITS[unit]
        if 1 <= limit <= MAX_RATE and 0 < period <= MAX_SECONDS:
            return RateLimit(limit, period)
    refuse(
        option,
        f'a rate such as "10/s", "100/m", "5/h" or "3/10s" (1 to {MAX_RATE:,} starts '
        "in a window of seconds up to 100 years)",
        value,
    )


def queue_concurrency(option: str, value: Any) -> int:
    """How many jobs of a queue may be active at once, across all workers."""
    return whole_number(option, value, 1, MAX_QUEUE_CONCURRENCY)


def rate_key(option: str, value: Any) -> str:
    """The name of a task argument (Python identifier) whose value picks the bucket."""
    if type(value) is not str or not value.isidentifier():
        refuse(option, "the name of one of the task's arguments", value)
    return value


def retention_count(option: str, value: Any) -> int:
    return whole_number(option, value, 0, 2**62)


def arguments(args: Any, kwargs: Any) -> tuple[tuple[Any, ...] | list[Any], dict[str, Any]]:
    """A call's arguments: ``args`` a list or tuple (a string is not a list of
    arguments: ``enqueue("add", "ab")`` would call ``add("a", "b")``), and
    ``kwargs`` a dict whose keys are strings."""
    if type(args) is not tuple and type(args) is not list:
        refuse("args", "a list or tuple of positional arguments", args)
    if kwargs is None:
        return args, {}
    if type(kwargs) is not dict:
        refuse("kwargs", "a dict of keyword arguments", kwargs)
    for key in kwargs:
        if type(key) is not str:
            refuse("kwargs", "a dict whose keys are argument names (strings)", kwargs)
    return args, kwargs


def unknown_option(where: str, name: str, known: tuple[str, ...] | list[str]) -> NoReturn:
    """The error for a keyword nobody defined, with the nearest known one."""
    import difflib

    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
    raise ConfigurationError(f"{where} got an unknown option {name!r}{hint}")


# -- schedules (@app.periodic) ------------------------------------------------

#: The longest ``every``: a year. Longer is a slip (milliseconds, say).
MAX_EVERY = 366 * 24 * 3600
#: A schedule name is at most this long: its job id adds 30 characters.
MAX_SCHEDULE_NAME = 200
#: The fields of a cron expression, in order (6 fields: "second" first).
CRON_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_CRON_RANGES = {
    "second": "0-59",
    "minute": "0-59",
    "hour": "0-23",
    "day-of-month": "1-31, on a day the months given have",
    "month": "1-12 or JAN-DEC",
    "day-of-week": "0-7 or SUN-SAT",
}


def cron(option: str, value: Any) -> tuple[str, ...]:
    """The fields of a cron expression (5, or 6 with seconds first), checked
    by ``cronsim``; the error names the bad field and what it holds.

    >>> cron("cron", "*/5 * * * *")
    ('*/5', '*', '*', '*', '*')
    >>> cron("cron", "61 * * * *")
    Traceback (most recent call last):
    ...
    conveyor.errors.ConfigurationError: cron expression '61 * * * *': bad minute field '61' (minute is 0-59)
    """
    from datetime import UTC, datetime

    from cronsim import CronSim, CronSimError

    if type(value) is not str:
        refuse(option, "a cron expression such as '*/5 * * * *'", value)
    fields = tuple(value.split())
    if len(fields) not in (5, 6):
        raise ConfigurationError(
            f"cron expression {value!r}: {len(fields)} fields, not 5 "
            f"({' '.join(CRON_FIELDS)}) or 6 (second first)"
        )
    names = (("second",) if len(fields) == 6 else ()) + CRON_FIELDS
    try:
        CronSim(" ".join(fields), datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        # cronsim says "Bad minute": name the field and what it holds too.
        bad = str(exc).removeprefix("Bad ").strip()
        if bad in names:
            raise ConfigurationError(
                f"cron expression {value!r}: bad {bad} field {fields[names.index(bad)]!r} "
                f"({bad} is {_CRON_RANGES[bad]})"
            ) from None
        raise ConfigurationError(f"cron expression {value!r}: {exc}") from None
    return fields


def time_zone(option: str, value: Any) -> ZoneInfo:
    """An IANA time zone by name (``Europe/Paris``), from the system's
    database or the ``tzdata`` package."""
    wanted = "an IANA time zone name such as 'Europe/Paris'"
    if type(value) is not str or not value or "\x00" in value:
        refuse(option, wanted, value)
    try:
        return ZoneInfo(value)
    except (KeyError, ValueError, OSError):  # not found (a KeyError), a bad path, a folder
        raise ConfigurationError(
            f"{option} must be {wanted}, not {shown(value)} (unknown)"
        ) from None


def every(option: str, value: Any) -> int:
    """A whole number of seconds from 1 to a year (``30``, or ``30.0``)."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    return whole_number(option, value, 1, MAX_EVERY)


def schedule_name(option: str, value: Any) -> str:
    if type(value) is not str or not 0 < len(value) <= MAX_SCHEDULE_NAME or not value.isprintable():
        refuse(
            option,
            f"a schedule name: 1 to {MAX_SCHEDULE_NAME} printable characters "
            "(no newline, tab or control characters)",
            value,
        )
    return value
