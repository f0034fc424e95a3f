"""Tasks run by real ``conveyor worker`` processes in ``tests/test_redis_faults.py``.

``CONVEYOR_URL`` names a private redis-server; ``MARKS`` is a file every run
of ``mark`` appends one line to, ``<n> <pid>``, so the test can count how many
times each job's body ran, whatever the store says.
"""

from __future__ import annotations

import os
import time

from conveyor import Conveyor

app = Conveyor()


@app.task(name="mark")
def mark(n: int, seconds: float = 0.005) -> int:
    # one write(2) of a short line in append mode: lines of concurrent runs never mix
    fd = os.open(os.environ["MARKS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{n} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    time.sleep(seconds)
    return n
