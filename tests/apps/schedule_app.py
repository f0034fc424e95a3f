"""The app of ``tests/test_e2e_schedules.py``: one schedule ticking every second.

The test copies this file into a temporary folder and runs ``conveyor worker
schedule_app:app`` there, three at a time, with ``CONVEYOR_URL`` naming the
store. Each worker logs ``schedule tick: enqueued periodic:tick:<tick>`` for
every tick whose job it enqueued: the test counts those lines (no tick
twice) and reads the jobs back (no tick missing).
"""

from __future__ import annotations

from conveyor import Conveyor

app = Conveyor()
app.queue("default", keep_completed=None)  # the test reads back every job


@app.periodic(every=1, name="tick")
def tick() -> None:
    pass
