"""The ``conveyor`` command. APP is ``module:attribute``, importable from the
current folder. Human output is tables; ``--json`` is for scripts."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from conveyor.app import Conveyor
from conveyor.brokers.base import STATES
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
        raise ConfigurationError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    app = getattr(module, attribute, None)
    if not isinstance(app, Conveyor):
        found = "nothing" if app is None else type(app).__name__
        raise ConfigurationError(f"APP {spec!r} is not a Conveyor app (found {found})")
    return app


def _json_arg(text: str | None, name: str, kind: type) -> Any:
    if text is None:
        return kind()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=name) from None
    if not isinstance(value, kind):
        raise click.BadParameter(f"must be a JSON {'array' if kind is list else 'object'}", param_hint=name)
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
def main() -> None:
    """conveyor: background jobs for Python."""


@main.command()
@click.argument("app")
@click.option("-q", "--queues", help="Comma-separated queues, in strict priority order.")
@click.option("-c", "--concurrency", default=10, show_default=True, help="Jobs run at once.")
@click.option("--burst", is_flag=True, help="Exit 0 once no job is waiting or active in the queues.")
@click.option("--lease", default=30.0, show_default=True, help="Seconds a claimed job stays claimed without renewal.")
@click.option("--grace", default=30.0, show_default=True, help="Seconds active jobs get to finish on SIGTERM.")
@click.option("--max-stalled", type=int, default=None, help="Lease expiries a job survives before it goes dead.")
@click.option("--poll", default=1.0, show_default=True, help="Longest idle wait between store checks (seconds).")
@click.option("--loop", type=click.Choice(["auto", "asyncio", "uvloop"]), default="auto", show_default=True,
              help="Event loop: uvloop when installed (auto), or asyncio's own.")
@click.option("--log-level", default="INFO", show_default=True)
def worker(app: str, queues: str | None, concurrency: int, burst: bool, lease: float, grace: float,
           max_stalled: int | None, poll: float, loop: str, log_level: str) -> None:
    """Run jobs."""
    from conveyor.worker import Worker

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    conveyor_app = load_app(app)
    names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    code = Worker(conveyor_app, names, concurrency=concurrency, lease=lease, grace=grace, burst=burst,
                  max_stalled=max_stalled, poll_interval=poll).run(loop=loop)
    sys.exit(code)


@main.command()
@click.argument("app")
@click.argument("task")
@click.option("--args", "args_json", help="Positional arguments as a JSON array.")
@click.option("--kwargs", "kwargs_json", help="Keyword arguments as a JSON object.")
@click.option("--queue")
@click.option("--delay", type=float)
@click.option("--priority", type=int)
@click.option("--job-id")
def enqueue(app: str, task: str, args_json: str | None, kwargs_json: str | None, queue: str | None,
            delay: float | None, priority: int | None, job_id: str | None) -> None:
    """Enqueue TASK by name; prints the job id."""
    job = load_app(app).enqueue(
        task, _json_arg(args_json, "--args", list), _json_arg(kwargs_json, "--kwargs", dict),
        queue=queue, delay=delay, priority=priority, job_id=job_id,
    )
    click.echo(job.id)


@main.command()
@click.argument("app")
@click.option("--json", "as_json", is_flag=True)
def stats(app: str, as_json: bool) -> None:
    """Jobs per queue and state."""
    counts = load_app(app).stats()
    if as_json:
        click.echo(json.dumps(counts, indent=2, sort_keys=True))
        return
    table = Table("queue", *STATES, title="conveyor stats")
    for name in sorted(counts):
        table.add_row(name, *(str(counts[name][state]) for state in STATES))
    console.print(table)


@main.command()
@click.argument("app")
@click.option("--queue")
@click.option("--state", type=click.Choice(STATES))
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def jobs(app: str, queue: str | None, state: str | None, limit: int, as_json: bool) -> None:
    """List jobs, oldest first."""
    found = [job.to_dict() for job in load_app(app).jobs(queue=queue, state=state, limit=limit)]
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    table = Table("id", "task", "queue", "state", "attempts", "error", title=f"{len(found)} jobs")
    for job in found:
        error = job["error"] or ""
        table.add_row(job["id"], job["task"], job["queue"], job["state"], str(job["attempts"]),
                      error if len(error) <= 60 else error[:57] + "...")
    console.print(table)


@main.command()
@click.argument("app")
@click.argument("job_ids", nargs=-1)
@click.option("--all-dead", is_flag=True, help="Retry every dead job (of --queue).")
@click.option("--queue")
def retry(app: str, job_ids: tuple[str, ...], all_dead: bool, queue: str | None) -> None:
    """Send dead jobs back to waiting with fresh attempts (same ids)."""
    if bool(job_ids) == all_dead:
        raise click.UsageError("give JOB_ID... or --all-dead, not both and not neither")
    conveyor_app = load_app(app)
    moved = conveyor_app.retry_dead(queue) if all_dead else conveyor_app.broker.retry(list(job_ids))
    click.echo(f"{moved} job(s) back to waiting")
    if job_ids and moved < len(job_ids):
        sys.exit(1)


@main.command()
@click.argument("app")
@click.argument("job_ids", nargs=-1, required=True)
def cancel(app: str, job_ids: tuple[str, ...]) -> None:
    """Cancel waiting or delayed jobs."""
    conveyor_app = load_app(app)
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
@click.option("--db", default=None, help="SQLite file for the demo (default: a fresh temporary one).")
@click.option("--workers", default=2, show_default=True, help="Worker processes.")
def demo(db: str | None, workers: int) -> None:
    """Run the seed's example on the embedded store with two worker processes."""
    from conveyor.demo import run_demo

    sys.exit(run_demo(db, workers))


if __name__ == "__main__":
    main()
