"""The app ``tests/test_cli.py`` points the ``conveyor`` command at.

The tests copy this file into a temporary folder, make it the current
folder and set ``CONVEYOR_URL`` to a SQLite file there.
"""

from __future__ import annotations

from conveyor import Conveyor

app = Conveyor()
app.queue("bulk", rate_limit="10/m", concurrency=4)  # no task: shown by stats all the same

not_an_app = 42


@app.task(name="add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="report", queue="critical")
def report(name: str) -> str:
    return name


@app.task(name="ping")
def ping() -> str:
    return "pong"
