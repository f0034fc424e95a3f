"""What a user's type checker sees (checked by tests/test_typing.py with mypy
and pyright, both strict): a task keeps its function's signature, a job its
result type. Each line marked ``# type: ignore`` (mypy) and ``# pyright:
ignore`` must be an error; an ignore that is not needed fails the check."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, assert_type

from conveyor import Conveyor
from conveyor.job import Job
from conveyor.task import AsyncTask, SyncTask

app = Conveyor("memory://")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="send-email", queue="critical", attempts=5)
async def send_email(to: str, subject: str = "hi") -> dict[str, str]:
    return {"to": to, "subject": subject}


sync_task: SyncTask[[int, int], int] = add
async_task: AsyncTask[[str, str], dict[str, str]] = send_email
assert_type(add(1, 2), int)  # calling a task runs it here and now
coroutine: Coroutine[Any, Any, dict[str, str]] = send_email("a@b.c")
coroutine.close()


@app.periodic(every=30, name="poll-feeds")
def poll_feeds() -> int:
    return 1


@app.periodic("*/5 * * * *", tz="Europe/Paris")
@app.task(name="report", attempts=1)
async def report() -> None:
    pass


assert_type(poll_feeds, SyncTask[[], int])  # a schedule's function stays a task
assert_type(report, AsyncTask[[], None])

job = add.enqueue(2, 3)
assert_type(job, Job[int])
assert_type(job.result(timeout=5), int)
assert_type(add.options(delay=10, priority=9).enqueue(2, 3).result(), int)
assert_type(send_email.enqueue("a@b.c").result(), dict[str, str])
assert_type(app.enqueue("send-email", kwargs={"to": "a@b.c"}, queue="critical"), Job[Any])


async def in_async_code() -> None:
    mail = await send_email.enqueue_async("a@b.c", subject="welcome")
    assert_type(await mail.result_async(timeout=5), dict[str, str])


add.enqueue("a", "b")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
add.enqueue(1, 2, 3)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
add.enqueue(1)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
send_email.enqueue(to=5)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
add.options(priority="high")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
add.options(atempts=5)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
app.enqueue("add", [1, 2], delay="5")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
app.queue("bulk", keep_completed="all")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
add.s(1, "2")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
x: str = add.enqueue(2, 3).result()  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
