"""What the scheduler costs an idle worker: CPU with 0 vs N schedules.

Two ``conveyor worker`` processes run side by side on one store for the same
wall-clock time: one on an app with no schedule, one on an app with N
(default 1,000) schedules firing every minute (``* * * * *``, the cron path,
dearer than ``every=``). Both serve a queue no job goes to, so neither runs
the jobs the schedules enqueue: what differs is the scheduler alone (its
heap, the next-tick computations, one ``fire`` of N ticks a minute, its log
lines). Their CPU time (user + system, from /proc) is read once both are
serving, after the start-up imports, and again at the end.

    python benchmarks/scheduler_cost.py                     # SQLite, 150 s
    python benchmarks/scheduler_cost.py --url redis://127.0.0.1:6379/5 --seconds 130

Linux only (/proc). Prints the two CPU times and the difference as a share
of one CPU over the run.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APP = """
from conveyor import Conveyor

app = Conveyor()

for i in range({n}):
    def job() -> None:
        pass

    job.__qualname__ = f"job_{{i}}"
    app.periodic("* * * * *", name=f"schedule-{{i}}")(job)
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--url", default=None, help="store URL (default: a fresh SQLite file)")
    parser.add_argument(
        "--log-level", default="WARNING", help="the workers' (INFO: a line per job enqueued)"
    )
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="conveyor-scheduler-cost-"))
    url = args.url or f"sqlite:///{folder}/bench.db"
    (folder / "none_app.py").write_text(APP.format(n=0))
    (folder / "many_app.py").write_text(APP.format(n=args.schedules))
    env = {**os.environ, "CONVEYOR_URL": url, "PYTHONUNBUFFERED": "1"}
    procs = {}
    for name in ("none", "many"):
        log = open(folder / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli", "worker", f"{name}_app:app", "-q", "idle",
             "--log-level", args.log_level],
            cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    time.sleep(5.0)  # past the imports and the start-up of both
    start = {name: cpu_seconds(p.pid) for name, p in procs.items()}
    began = time.monotonic()
    time.sleep(args.seconds)
    wall = time.monotonic() - began
    spent = {name: cpu_seconds(p.pid) - start[name] for name, p in procs.items()}
    for p in procs.values():
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
    from conveyor import Conveyor

    jobs = Conveyor(url).stats().get("default", {}).get("waiting", 0)
    print(
        f"store {url}, {wall:.0f} s, {args.schedules} schedules firing every minute, "
        f"log level {args.log_level}"
    )
    print(f"  jobs the schedules enqueued: {jobs}")
    print(f"  CPU, worker without schedules: {spent['none']:.2f} s ({spent['none'] / wall:.3%})")
    print(f"  CPU, worker with schedules:    {spent['many']:.2f} s ({spent['many'] / wall:.3%})")
    extra = spent["many"] - spent["none"]
    print(f"  added by the scheduler:        {extra:.2f} s = {extra / wall:.3%} of one CPU")


if __name__ == "__main__":
    main()
