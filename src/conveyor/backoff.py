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

import random
from collections.abc import Callable
from dataclasses import dataclass

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
        if not callable(self.kind) and self.kind not in KINDS:
            raise ConfigurationError(
                f"unknown backoff {self.kind!r}: use one of {', '.join(KINDS)} or a callable"
            )
        if self.delay < 0:
            raise ConfigurationError(f"backoff_delay must be >= 0, not {self.delay}")
        if self.max is not None and self.max < 0:
            raise ConfigurationError(f"backoff_max must be >= 0, not {self.max}")
        jitter = 1.0 if self.jitter is True else float(self.jitter)
        if not 0.0 <= jitter <= 1.0:
            raise ConfigurationError(f"jitter must be between 0 and 1, not {self.jitter}")
        object.__setattr__(self, "jitter", jitter)

    def seconds(self, failed_run: int) -> float:
        """Seconds to wait after run number ``failed_run`` (1-based) failed."""
        n = max(1, failed_run)
        if callable(self.kind):
            wait = float(self.kind(n))
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
