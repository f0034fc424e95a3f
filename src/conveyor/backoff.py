"""How long to wait before the next run of a failed job.

``delay_for(policy, n)`` takes the 1-based number of the run that just failed:
with ``backoff_delay=1`` the waits are

=============  ======================
fixed          1, 1, 1, 1 ...
linear         1, 2, 3, 4 ...
exponential    1, 2, 4, 8 ...
fibonacci      1, 1, 2, 3, 5 ...
=============  ======================

A callable ``backoff(n) -> seconds`` replaces the table. ``backoff_max`` caps
the wait; ``jitter`` (0 to 1, or True for 1) takes a random share off it so
many jobs failing together do not retry together.
"""

from __future__ import annotations

import numbers
import random
from collections.abc import Callable
from dataclasses import dataclass

from conveyor import validate
from conveyor.errors import ConfigurationError

BackoffFunction = Callable[[int], float]
KINDS = ("fixed", "linear", "exponential", "fibonacci")


def _fibonacci(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


@dataclass(frozen=True, slots=True)
class Backoff:
    """A retry delay policy.

    >>> Backoff("exponential", delay=2.0).seconds(3)
    8.0
    """

    kind: str | BackoffFunction = "exponential"
    delay: float = 1.0
    max: float | None = None
    jitter: float = 0.0

    def __post_init__(self) -> None:
        validate.backoff("backoff", self.kind, KINDS, allow_callable=True)
        object.__setattr__(self, "delay", validate.seconds("backoff_delay", self.delay))
        if self.max is not None:
            object.__setattr__(self, "max", validate.seconds("backoff_max", self.max))
        object.__setattr__(self, "jitter", validate.jitter("jitter", self.jitter))

    def seconds(self, failed_run: int) -> float:
        """Seconds to wait after run number ``failed_run`` (1-based) failed."""
        n = max(1, failed_run)
        if callable(self.kind):
            wait = self.kind(n)
            if (
                not isinstance(wait, numbers.Real)
                or isinstance(wait, bool)
                or not (0 <= wait <= validate.MAX_SECONDS)
            ):
                raise ConfigurationError(
                    f"the backoff {getattr(self.kind, '__qualname__', self.kind)!r} returned "
                    f"{validate.shown(wait)} for run {n}: it must return a number of seconds "
                    "from 0 up to 100 years"
                )
            wait = float(wait)
        elif self.kind == "fixed":
            wait = self.delay
        elif self.kind == "linear":
            wait = self.delay * n
        elif self.kind == "exponential":
            wait = self.delay * 2.0 ** (n - 1)
        else:
            wait = self.delay * _fibonacci(n)
        if self.max is not None:
            wait = min(wait, self.max)
        if self.jitter:
            wait -= wait * self.jitter * random.random()
        return max(0.0, wait)
