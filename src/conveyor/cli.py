"""The ``conveyor`` command. APP is ``module:attribute``, importable from the
current folder. Human output is tables; ``--json`` is for scripts."""

from __future__ import annotations

import difflib
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from conveyor import validate
from conveyor.app import Conveyor
from conveyor.brokers.base import BACKLOG, PURGEABLE_STATES, STATES
from conveyor.errors import ConfigurationError, ConveyorError

console = Console()
if not console.is_terminal:  # piped: do not fold ids and errors at 80 columns
    console = Console(width=240)


def load_app(spec: str) -> Conveyor:
    """Import ``module:attribute`` from the current folder."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"APP {spec!r} is not of the form module:attribute")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ConveyorError:
        raise
    except Exception as exc:  # the user's module failed to import: say why in one line
        raise ConfigurationError(
            f"cannot import {module_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    app = getattr(module, attribute, None)
    if not isinstance(app, Conveyor):
        found = "nothing" if app is None else type(app).__name__
        raise ConfigurationError(f"APP {spec!r} is not a Conveyor app (found {found})")
    return app


def open_app(spec: str, *, create: bool) -> Conveyor:
    """The app with its store open. ``create=False`` for commands that only
    read or change existing jobs: a mistyped path is an error, never a new
    empty store. With ``-v``, says on stderr which store it uses."""
    app = load_app(spec)
    broker = app.open(create=create)
    if click.get_current_context().find_root().params.get("verbose"):
        click.echo(f"conveyor: store {broker.location}", err=True)
    return app


def checked(
    check: Callable[[str, Any], Any],
) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback running one of ``conveyor.validate``'s checks, so a bad
    flag gets the same one-line error as the API, naming the flag."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        return None if value is None else check("/".join(param.opts), value)

    return callback


def _json_arg(text: str | None, name: str, kind: type) -> Any:
    if text is None:
        return kind()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(value, kind):
        wanted = "array" if kind is list else "object"
        raise ConfigurationError(f"{name} must be a JSON {wanted}, not {validate.shown(value)}")
    return value


class ConveyorGroup(click.Group):
    """Turns every ConveyorError into one line on stderr and exit status 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConveyorError as exc:
            click.echo(f"conveyor: error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=ConveyorGroup)
@click.version_option(package_name="conveyor-jobs")
@click.option("-v", "--verbose", is_flag=True, help="Say on stderr which store a command uses.")
def main(verbose: bool) -> None:
    """conveyor: background jobs for Python.

    Errors are one line on stderr with exit status 2. The worker exits 0 when
    stopped, 2 when the store refuses it for good (a wrong password, a
    database file deleted under it), 3 when too many timed-out sync jobs are
    stuck in their threads (a restart frees them).
    """


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _queues(option: str, text: str) -> list[str]:
    return validate.queue_list(option, [name.strip() for name in text.split(",")])


@main.command()
@click.argument("app")
@click.option(
    "-q",
    "--queues",
    callback=checked(_queues),
    help="Comma-separated queues, in strict priority order (default: every queue the app names).",
)
@click.option(
    "-c",
    "--concurrency",
    type=int,
    default=10,
    show_default=True,
    callback=checked(validate.concurrency),
    help="Jobs run at once.",
)
@click.option(
    "--burst",
    is_flag=True,
    help="Exit 0 once no job is waiting or active in the queues "
    "(delayed jobs and retries not yet due are not waited for).",
)
@click.option(
    "--lease",
    type=float,
    default=30.0,
    show_default=True,
    callback=checked(validate.lease),
    help="Seconds a claimed job stays claimed without renewal.",
)
@click.option(
    "--grace",
    type=float,
    default=30.0,
    show_default=True,
    callback=checked(validate.grace),
    help="Seconds active jobs get to finish on SIGTERM.",
)
@click.option(
    "--max-stalled",
    type=int,
    default=None,
    callback=checked(validate.max_stalled),
    help="Lease expiries a job survives before it goes dead (default: the app's, 3).",
)
@click.option(
    "--poll",
    type=float,
    default=1.0,
    show_default=True,
    callback=checked(validate.poll),
    help="Longest idle wait between store checks (seconds).",
)
@click.option(
    "--max-abandoned-threads",
    type=int,
    default=None,
    callback=checked(validate.max_abandoned_threads),
    help="Threads of sync jobs stuck past their timeout the worker tolerates; beyond, "
    "it exits 3 for a restart (default: the concurrency or 10, whichever is more).",
)
@click.option(
    "--loop",
    type=click.Choice(["auto", "asyncio", "uvloop"]),
    default="auto",
    show_default=True,
    help="Event loop: uvloop when installed (auto), or asyncio's own.",
)
@click.option(
    "--no-schedules",
    is_flag=True,
    help="Fire no @app.periodic schedules here (by default every worker fires them all, "
    "one job per tick whatever the number of workers).",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="INFO",
    show_default=True,
)
def worker(
    app: str,
    queues: list[str] | None,
    concurrency: int,
    burst: bool,
    lease: float,
    grace: float,
    max_stalled: int | None,
    poll: float,
    max_abandoned_threads: int | None,
    loop: str,
    no_schedules: bool,
    log_level: str,
) -> None:
    """Run jobs."""
    from conveyor.worker import Worker

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    conveyor_app = open_app(app, create=True)
    code = Worker(
        conveyor_app,
        queues,
        concurrency=concurrency,
        lease=lease,
        grace=grace,
        burst=burst,
        max_stalled=max_stalled,
        poll_interval=poll,
        max_abandoned_threads=max_abandoned_threads,
        schedules=not no_schedules,
    ).run(loop=loop)
    sys.exit(code)


@main.command()
@click.argument("app")
@click.argument("task")
@click.option("--args", "args_json", help="Positional arguments as a JSON array.")
@click.option("--kwargs", "kwargs_json", help="Keyword arguments as a JSON object.")
@click.option("--queue", callback=checked(validate.queue_name))
@click.option("--delay", type=float, callback=checked(validate.seconds), help="Seconds from now.")
@click.option("--priority", type=int, callback=checked(validate.priority))
@click.option("--job-id", callback=checked(validate.job_id))
@click.option(
    "--unique-for",
    type=float,
    callback=checked(validate.unique_for),
    help="Seconds: one job per key (the --job-id, else task and arguments) until then after it ends.",
)
def enqueue(
    app: str,
    task: str,
    args_json: str | None,
    kwargs_json: str | None,
    queue: str | None,
    delay: float | None,
    priority: int | None,
    job_id: str | None,
    unique_for: float | None,
) -> None:
    """Enqueue TASK by name; prints the job id (with --unique-for, that of the
    job holding the key when it is held)."""
    conveyor_app = open_app(app, create=True)
    args, kwargs = _json_arg(args_json, "--args", list), _json_arg(kwargs_json, "--kwargs", dict)
    if task not in conveyor_app.tasks:
        _warn_unknown_task(app, conveyor_app, task, queue)
    job = conveyor_app.enqueue(
        task, args, kwargs, queue=queue, delay=delay, priority=priority, job_id=job_id,
        unique_for=unique_for,
    )  # fmt: skip
    click.echo(job.id)


def _warn_unknown_task(spec: str, app: Conveyor, task: str, queue: str | None) -> None:
    """Enqueueing by name works without the task's code, but then nothing
    knows the queue the task declares: say so, and name a near miss."""
    close = difflib.get_close_matches(task, list(app.tasks), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    where = (
        f"queue {queue!r}"
        if queue
        else "queue 'default', not any queue the task declares elsewhere"
    )
    click.echo(
        f"conveyor: warning: {spec} defines no task {task!r}{hint}: the job goes to {where}, "
        "and a worker that does not know the task sends it to the dead-letter list",
        err=True,
    )


@main.command()
@click.argument("app")
@click.option("--json", "as_json", is_flag=True)
def stats(app: str, as_json: bool) -> None:
    """Jobs per queue and state."""
    conveyor_app = open_app(app, create=False)
    counts = conveyor_app.stats()
    if as_json:
        click.echo(json.dumps(counts, indent=2, sort_keys=True))
        return
    paused = conveyor_app.paused()
    controls = conveyor_app.controls  # the app's declarations: the store enforces them
    rates, caps = controls.queue_rates, controls.concurrency
    table = Table("queue", *STATES, "paused", "rate limit", "concurrency", title="conveyor stats")
    for name in sorted(counts.keys() | paused | rates.keys() | caps.keys()):
        row = counts.get(name, dict.fromkeys(STATES, 0))
        rate = rates.get(name)
        table.add_row(
            name,
            *(str(row[state]) for state in STATES),
            "yes" if name in paused else "",
            f"{rate.limit}/{rate.period:g}s" if rate else "",
            str(caps.get(name, "")),
        )
    console.print(table)
    click.echo(f"store: {conveyor_app.broker.location}")


@main.command()
@click.argument("app")
@click.option("--json", "as_json", is_flag=True)
def schedules(app: str, as_json: bool) -> None:
    """The app's schedules: when each fires next, and when it last did."""
    conveyor_app = open_app(app, create=False)
    found = conveyor_app.schedule_status()
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    table = Table(
        "name", "schedule", "tz", "queue", "next run", "last run",
        title=f"{len(found)} schedules",
    )  # fmt: skip
    for row in found:
        table.add_row(
            *(escape(row[key]) for key in ("name", "schedule", "tz", "queue")),
            row["next_run"] or "never",
            row["last_run"] or "never",
        )
    console.print(table)
    click.echo(f"store: {conveyor_app.broker.location}")


@main.command()
@click.argument("app")
@click.option("--queue", callback=checked(validate.queue_name))
@click.option("--state", type=click.Choice(STATES))
@click.option(
    "--limit",
    type=int,
    default=100,
    show_default=True,
    callback=checked(lambda option, value: validate.whole_number(option, value, 1, 10**9)),
)
@click.option("--json", "as_json", is_flag=True)
def jobs(app: str, queue: str | None, state: str | None, limit: int, as_json: bool) -> None:
    """List jobs, oldest first."""
    conveyor_app = open_app(app, create=False)
    found = [job.to_dict() for job in conveyor_app.jobs(queue=queue, state=state, limit=limit)]
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    table = Table("id", "task", "queue", "state", "attempts", "error", title=f"{len(found)} jobs")
    for job in found:
        error = job["error"] or ""
        table.add_row(
            job["id"],
            job["task"],
            job["queue"],
            job["state"],
            str(job["attempts"]),
            error if len(error) <= 60 else error[:57] + "...",
        )
    console.print(table)
    click.echo(f"store: {conveyor_app.broker.location}")


@main.command()
@click.argument("app")
@click.argument("job_ids", nargs=-1)
@click.option("--all-dead", is_flag=True, help="Retry every dead job (of --queue).")
@click.option("--queue", callback=checked(validate.queue_name))
def retry(app: str, job_ids: tuple[str, ...], all_dead: bool, queue: str | None) -> None:
    """Send dead jobs back to waiting with fresh attempts (same ids)."""
    if bool(job_ids) == all_dead:
        raise click.UsageError("give JOB_ID... or --all-dead, not both and not neither")
    conveyor_app = open_app(app, create=False)
    moved = conveyor_app.retry_dead(queue) if all_dead else conveyor_app.broker.retry(list(job_ids))
    click.echo(f"{moved} job(s) back to waiting")
    if job_ids and moved < len(job_ids):
        sys.exit(1)


@main.command()
@click.argument("app")
@click.argument("job_ids", nargs=-1, required=True)
def cancel(app: str, job_ids: tuple[str, ...]) -> None:
    """Cancel waiting or delayed jobs."""
    conveyor_app = open_app(app, create=False)
    failures = 0
    for job_id in job_ids:
        if conveyor_app.broker.cancel(job_id):
            click.echo(f"{job_id} cancelled")
        else:
            job = conveyor_app.get_job(job_id)
            why = "no such job" if job is None else f"it is {job.state}"
            click.echo(f"{job_id} not cancelled: {why}", err=True)
            failures += 1
    if failures:
        sys.exit(1)


@main.command()
@click.argument("app")
@click.argument("queue", callback=checked(validate.queue_name))
def pause(app: str, queue: str) -> None:
    """Stop every worker from starting QUEUE's jobs (enqueue still works)."""
    conveyor_app = open_app(app, create=False)
    newly = conveyor_app.pause(queue)
    click.echo(f"{queue} paused" if newly else f"{queue} was paused already")


@main.command()
@click.argument("app")
@click.argument("queue", callback=checked(validate.queue_name))
def resume(app: str, queue: str) -> None:
    """Let workers start QUEUE's jobs again."""
    conveyor_app = open_app(app, create=False)
    resumed = conveyor_app.resume(queue)
    click.echo(f"{queue} resumed" if resumed else f"{queue} was not paused")


@main.command()
@click.argument("app")
@click.argument("queue", callback=checked(validate.queue_name))
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(PURGEABLE_STATES),
    help="A state to delete (repeat it for more; default: waiting and delayed). Never active.",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge(app: str, queue: str, states: tuple[str, ...], yes: bool) -> None:
    """Delete QUEUE's jobs in the given states; says how many."""
    conveyor_app = open_app(app, create=False)
    states = states or BACKLOG
    counts = conveyor_app.stats().get(queue, {})
    held = sum(counts.get(state, 0) for state in states)
    if not yes:
        click.confirm(
            f"delete {held} job(s) of {queue} ({', '.join(states)})?", abort=True, err=True
        )
    deleted = conveyor_app.purge(queue, states)
    click.echo(f"{deleted} job(s) of {queue} deleted")


@main.command()
@click.option(
    "--db", default=None, help="SQLite file for the demo (default: a fresh temporary one)."
)
@click.option("--workers", default=2, show_default=True, help="Worker processes.")
def demo(db: str | None, workers: int) -> None:
    """Run the seed's example on the embedded store with two worker processes."""
    from conveyor.demo import run_demo

    sys.exit(run_demo(db, workers))


if __name__ == "__main__":
    main()
