"""Payloads and results are JSON, and only JSON.

Anything JSON cannot carry faithfully is refused before it is stored, with a
message naming the argument, so a job never fails later because its arguments
could not be read back. Tuples travel as lists (as in every JSON job queue);
dict keys must be strings; NaN and infinities are refused (JSON has no
spelling for them); integers must fit in 64 bits; strings must have a UTF-8
form (no unpaired surrogates). Sizes are counted in bytes of UTF-8.
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
    if kind is str:
        # A lone surrogate (from a bad decode) has no UTF-8 form: no store takes it.
        return (
            None
            if value.isascii() or _encodable(value)
            else f"{path} is a string with an unpaired surrogate"
        )
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
            problem = _find_problem(key, f"{path} key {key!r}") or _find_problem(
                item, f"{path}[{key!r}]"
            )
            if problem:
                return problem
        return None
    return f"{path} has type {kind.__module__}.{kind.__qualname__}".replace("builtins.", "")


class ResultTooLarge(PayloadError):
    """A task's return value over ``Conveyor(max_result=...)``."""


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _too_large(what: str, size: int, limit: int, setting: str) -> str:
    return (
        f"{what} {size:,} bytes as JSON, more than the {limit:,}-byte limit "
        f"({setting}); store large data elsewhere and pass a reference"
    )


def encode_payload(
    task: str,
    args: tuple[Any, ...] | list[Any],
    kwargs: dict[str, Any],
    max_bytes: int = DEFAULT_MAX_PAYLOAD,
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
    data = orjson.dumps([args, kwargs])
    if len(data) > max_bytes:  # bytes, not characters: the store holds UTF-8
        raise PayloadError(
            f"cannot enqueue {task!r}: "
            + _too_large("its arguments take", len(data), max_bytes, "Conveyor(max_payload=...)")
        )
    return data.decode()


def decode_payload(text: str) -> tuple[list[Any], dict[str, Any]]:
    """``(args, kwargs)`` from stored JSON; ValueError when it is corrupt."""
    try:
        args, kwargs = orjson.loads(text)
    except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise ValueError(f"corrupt payload in the store: {exc}") from None
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ValueError("corrupt payload in the store: expected [args, kwargs]")
    return args, kwargs


def encode_result(value: Any, max_bytes: int = DEFAULT_MAX_PAYLOAD) -> str:
    """A task's return value as JSON text; PayloadError when JSON cannot carry
    it or it is larger than ``max_bytes``."""
    problem = _find_problem(value, "the return value")
    if problem:
        raise PayloadError(f"{problem}, which JSON cannot carry")
    data = orjson.dumps(value)
    if len(data) > max_bytes:
        raise ResultTooLarge(
            _too_large("the return value takes", len(data), max_bytes, "Conveyor(max_result=...)")
        )
    return data.decode()


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def loads(text: str | bytes | None) -> Any:
    return None if text is None else orjson.loads(text)
