"""Schedules: ``@app.periodic`` tasks, and when each one's ticks fall.

A schedule fires its task at ticks: the times a cron expression matches in a
time zone (``@app.periodic("*/5 * * * *", tz="Europe/Paris")``), or every N
seconds (``@app.periodic(every=30)``). Every worker runs the scheduler
(``worker/scheduler.py``); exactly one job is enqueued per tick because the
store claims the tick and enqueues its job in one atomic step (``Broker.fire``),
refusing any tick that is not later than the schedule's last one. The job's
id is ``periodic:<name>:<tick as ISO-8601 UTC>``, e.g.
``periodic:poll-feeds:2026-12-03T12:00:30Z``.

Ticks are whole seconds since the epoch, computed by every worker alike:

- ``every=N``: the multiples of N seconds since the epoch (every=60 fires
  at each full minute, every=3600 at each full hour, UTC), so workers that
  started at different moments agree on the ticks.
- cron: 5 fields (minute hour day-of-month month day-of-week) or 6 with
  seconds first, evaluated in ``tz`` (an IANA name, default UTC) by
  ``cronsim`` (which follows Debian cron). Daylight saving time: a local
  time that does not exist (Europe/Paris skips 02:00-03:00 in spring) fires
  once, at the moment the clocks jump (03:00 local); a local time that
  happens twice (02:00-03:00 again in autumn) fires once, at its first
  occurrence. Expressions with a wildcard hour (``0 * * * *``) fire on
  every real hour, so the repeated hour fires twice, once per hour that
  passes, as hourly jobs should.

Missed ticks. A tick is on time until ``ON_TIME`` (60 s) after it: a
running worker fires every tick, late if its loop was held up, and one that
starts fires the latest tick if it is on time (the ticks before it were for
the workers running then). A tick older than that was missed (no worker ran,
or every one was stuck): ``missed="skip"`` (the default) never fires it, and
the schedule resumes with its next tick; ``missed="run_once"`` fires one job
for all the ticks missed, at the newest of them, as soon as a worker runs
again (a schedule never fired before does not catch up).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from cronsim import CronSim

from conveyor import validate
from conveyor.errors import ConfigurationError

MISSED = ("skip", "run_once")
#: Seconds after its time a tick still counts as on time (fires, late).
ON_TIME = 60.0


def iso(at: float) -> str:
    """A tick as ISO-8601 UTC, to the second: ``2026-12-03T12:00:30Z``."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tick_job_id(name: str, at: int) -> str:
    """The id of the job of schedule ``name``'s tick ``at``."""
    return f"periodic:{name}:{iso(at)}"


@dataclass(frozen=True, slots=True)
class Schedule:
    """One ``@app.periodic`` declaration: when its task's jobs are enqueued.

    >>> s = Schedule.declare("poll", "app.poll", "default", every=30)
    >>> s.next_after(1_000_000_010.5), s.latest(1_000_000_010.5)
    (1000000020, 1000000010)
    """

    name: str
    task: str
    queue: str
    cron: str | None
    every: int | None
    tz: str
    missed: str

    @classmethod
    def declare(
        cls,
        name: str | None,
        task: str,
        queue: str,
        cron: str | None = None,
        *,
        every: float | None = None,
        tz: str | None = None,
        missed: str = "skip",
    ) -> Schedule:
        """Check a declaration: every mistake is a one-line ConfigurationError.
        ``name`` None: not known yet (the decorator checks before it sees
        the function); the schedule is then named ``""`` until replaced."""
        what = (
            "@app.periodic"
            if name is None
            else f"schedule {validate.schedule_name('name', name)!r}"
        )
        if (cron is None) == (every is None):
            raise ConfigurationError(
                f"{what}: give either a cron expression or every=SECONDS, "
                f"not {'both' if cron is not None else 'neither'}"
            )
        if missed not in MISSED or type(missed) is not str:
            validate.refuse("missed", f"one of {', '.join(map(repr, MISSED))}", missed)
        if every is not None:
            if tz is not None:
                raise ConfigurationError(
                    f"{what}: tz applies to cron schedules; every=N ticks at "
                    "multiples of N seconds since the epoch, whatever the zone"
                )
            every = validate.every("every", every)
            return cls(name or "", task, queue, None, every, "UTC", missed)
        fields = validate.cron("cron", cron)
        zone = "UTC" if tz is None else validate.time_zone("tz", tz).key
        schedule = cls(name or "", task, queue, " ".join(fields), None, zone, missed)
        if schedule.next_after(datetime.now(UTC).timestamp()) is None:
            raise ConfigurationError(f"cron expression {cron!r} never matches")
        return schedule

    @property
    def description(self) -> str:
        """How people read it: the cron expression, or ``every 30s``."""
        return self.cron if self.cron is not None else f"every {self.every}s"

    def _cron(self, start: int, reverse: bool) -> int | None:
        assert self.cron is not None
        zone = ZoneInfo(self.tz)
        try:
            found = next(CronSim(self.cron, datetime.fromtimestamp(start, zone), reverse=reverse))
        except StopIteration:  # cronsim looks 50 years ahead at most
            return None
        return int(found.timestamp())

    def next_after(self, t: float) -> int | None:
        """The first tick strictly after ``t`` (None: none in 50 years)."""
        if self.every is not None:
            return (math.floor(t) // self.every + 1) * self.every
        return self._cron(math.floor(t), reverse=False)

    def latest(self, t: float) -> int | None:
        """The last tick at or before ``t`` (None: none in 50 years)."""
        if self.every is not None:
            return math.floor(t) // self.every * self.every
        # cronsim's reverse walk is strict too: from the next second down.
        return self._cron(math.floor(t) + 1, reverse=True)
