"""Payloads and results are JSON, and only JSON.

Anything JSON cannot carry faithfully is refused before it is stored, with a
message naming the argument, so a job never fails later because its arguments
could not be read back. Tuples travel as lists (as in every JSON job queue);
dict keys must be strings; NaN and infinities are refused (JSON has no
spelling for them); integers must fit in 64 bits.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from conveyor.errors import PayloadError

DEFAULT_MAX_PAYLOAD = 1024 * 1024  # the seed's "keep jobs small": 1 MiB

_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
_SCALARS = (str, bool, type(None))


def _find_problem(value: Any, path: str) -> str | None:
    """The first place in ``value`` JSON cannot carry, described, or None."""
    kind = type(value)
    if kind in _SCALARS:
        return None
    if kind is int:
        return None if _INT_MIN <= value <= _INT_MAX else f"{path} is an integer too large for JSON"
    if kind is float:
        return None if math.isfinite(value) else f"{path} is {value!r}, which JSON cannot represent"
    if kind is list or kind is tuple:
        for index, item in enumerate(value):
            problem = _find_problem(item, f"{path}[{index}]")
            if problem:
                return problem
        return None
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                return (
                    f"{path} has a key {key!r} of type {type(key).__name__} (JSON keys are strings)"
                )
            problem = _find_problem(item, f"{path}[{key!r}]")
            if problem:
                return problem
        return None
    return f"{path} has type {kind.__module__}.{kind.__qualname__}".replace("builtins.", "")


def encode_payload(
    task: str, args: tuple | list, kwargs: dict, max_bytes: int = DEFAULT_MAX_PAYLOAD
) -> str:
    """The stored form of a call: ``[args, kwargs]`` as JSON text.

    >>> encode_payload("add", (2, 3), {})
    '[[2,3],{}]'
    """
    for index, arg in enumerate(args):
        problem = _find_problem(arg, f"argument {index}")
        if problem:
            raise PayloadError(f"cannot enqueue {task!r}: {problem}, which JSON cannot carry")
    for name, arg in kwargs.items():
        problem = _find_problem(arg, f"argument {name!r}")
        if problem:
            raise PayloadError(f"cannot enqueue {task!r}: {problem}, which JSON cannot carry")
    text = orjson.dumps([args, kwargs]).decode()
    if len(text) > max_bytes:
        raise PayloadError(
            f"cannot enqueue {task!r}: its arguments take {len(text):,} bytes as JSON, more than "
            f"the {max_bytes:,}-byte limit; store large data elsewhere and pass a reference"
        )
    return text


def decode_payload(text: str) -> tuple[list, dict]:
    """``(args, kwargs)`` from stored JSON; ValueError when it is corrupt."""
    try:
        args, kwargs = orjson.loads(text)
    except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise ValueError(f"corrupt payload in the store: {exc}") from None
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ValueError("corrupt payload in the store: expected [args, kwargs]")
    return args, kwargs


def encode_result(value: Any) -> str:
    """A task's return value as JSON text; PayloadError when JSON cannot carry it."""
    problem = _find_problem(value, "the return value")
    if problem:
        raise PayloadError(f"{problem}, which JSON cannot carry")
    return orjson.dumps(value).decode()


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def loads(text: str | bytes | None) -> Any:
    return None if text is None else orjson.loads(text)
