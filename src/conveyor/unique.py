"""Unique jobs: ``task.options(unique_for=SECONDS).enqueue(...)``.

A job enqueued with ``unique_for`` carries a *unique key*: its ``job_id``
when the caller chose one, else ``unique_key(task, args, kwargs)``, a hash
of its task name and arguments. While a job holding that key has not ended,
and for ``unique_for`` seconds after it ended, enqueueing another job with
the key returns the holder instead of storing a second job. The store
decides it in the same atomic step that stores the job (``Broker.enqueue``
tells every rule), so two producers enqueueing at the same moment get one
job, and a lock record of its own keeps the key held after retention
deleted the ended job.

>>> unique_key("send-email", ["a@b.c"], {"subject": "hi", "lang": "en"}) == unique_key(
...     "send-email", ("a@b.c",), {"lang": "en", "subject": "hi"})
True
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson


def unique_key(task: str, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> str:
    """The key of a call: SHA-256 of its task name and arguments as canonical
    JSON (keys sorted at every depth, tuples as lists), in 64 hex digits.

    The same on every machine and in every process, whatever the order the
    keyword arguments came in or ``PYTHONHASHSEED``. Equal JSON means the
    same key: ``1`` and ``1.0`` differ (JSON writes them differently), a
    tuple and a list with the same items do not (JSON has one array).
    Arguments are checked for JSON (``encode_payload``) before this runs.
    """
    text = orjson.dumps([task, args, kwargs], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(text).hexdigest()
