"""Runs one action of one peer inside that peer's own virtual environment.

    <peer venv>/bin/python harness.py PEER enqueue --mode one|bulk --start N --count N
    <peer venv>/bin/python harness.py PEER latency --start N --count N --pause S
    <peer venv>/bin/python harness.py PEER worker
    <peer venv>/bin/python harness.py PEER versions

Prints one JSON object on stdout (``worker`` runs until killed). A peer is
``peers/PEER.py`` with the same shape everywhere:

- ``PACKAGES``: distribution names whose versions are reported;
- ``setup()``: connect (not timed); ``enqueue_one(n)``; ``enqueue_bulk(numbers)``
  or ``None`` when the system has no bulk API; with ``ASYNC = True`` these
  three are coroutines run on one event loop;
- ``worker()``: an argv list to exec (the system's own worker command), or a
  function that runs the worker in this process until killed;
- the job function, whose body is ``common.record(n)`` (``await
  common.record_async(n)`` when it is a coroutine).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.metadata
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BULK_CHUNK = 1000  # jobs per bulk call


def _load(name: str):
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    return importlib.import_module(f"peers.{name}")


def _call(peer, function, *args):
    result = function(*args)
    if getattr(peer, "ASYNC", False):
        return _loop().run_until_complete(result)
    return result


_LOOP: asyncio.AbstractEventLoop | None = None


def _loop() -> asyncio.AbstractEventLoop:
    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
        asyncio.set_event_loop(_LOOP)
    return _LOOP


def enqueue(peer, mode: str, start: int, count: int) -> dict:
    if hasattr(peer, "setup"):
        _call(peer, peer.setup)
    numbers = list(range(start, start + count))
    if mode == "bulk":
        if getattr(peer, "enqueue_bulk", None) is None:
            return {"error": "no bulk API"}
        chunks = [numbers[i : i + BULK_CHUNK] for i in range(0, count, BULK_CHUNK)]
        began = time.perf_counter()
        for chunk in chunks:
            _call(peer, peer.enqueue_bulk, chunk)
    elif getattr(peer, "ASYNC", False):

        async def one_by_one():
            for n in numbers:
                await peer.enqueue_one(n)

        began = time.perf_counter()
        _loop().run_until_complete(one_by_one())
    else:
        began = time.perf_counter()
        for n in numbers:
            peer.enqueue_one(n)
    return {"seconds": time.perf_counter() - began}


def latency(peer, start: int, count: int, pause: float) -> dict:
    """A warm-up job (number ``start - 1``) that the worker must have run, then
    ``count`` jobs one at a time, ``pause`` seconds apart, each sent time noted."""
    import common

    if hasattr(peer, "setup"):
        _call(peer, peer.setup)
    _call(peer, peer.enqueue_one, start - 1)
    deadline = time.time() + 120
    while not common.started(start - 1):
        if time.time() > deadline:
            return {"error": "the worker never ran the warm-up job"}
        time.sleep(0.05)
    time.sleep(0.5)
    sent = {}
    for n in range(start, start + count):
        sent[n] = time.time()
        _call(peer, peer.enqueue_one, n)
        time.sleep(pause)
    return {"sent": sent}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("peer")
    parser.add_argument("action", choices=["enqueue", "latency", "worker", "versions"])
    parser.add_argument("--mode", default="one")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--pause", type=float, default=0.02)
    args = parser.parse_args()
    os.chdir(HERE)  # worker commands import peers.PEER from here
    peer = _load(args.peer)
    if args.action == "worker":
        command = peer.worker()
        if isinstance(command, list):
            sys.stdout.flush()
            os.execv(command[0], command)
        return
    if args.action == "versions":
        out = {}
        for name in peer.PACKAGES:
            try:
                out[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                out[name] = "?"
        out["python"] = sys.version.split()[0]
    elif args.action == "enqueue":
        out = enqueue(peer, args.mode, args.start, args.count)
    else:
        out = latency(peer, args.start, args.count, args.pause)
    if args.action != "versions" and hasattr(peer, "close"):
        _call(peer, peer.close)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
