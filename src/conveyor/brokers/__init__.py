"""Stores, chosen by URL scheme: ``memory://``, ``sqlite:///path.db``."""

from __future__ import annotations

from urllib.parse import urlsplit

from conveyor.brokers.base import Broker
from conveyor.clock import Clock, SystemClock
from conveyor.errors import ConfigurationError

SCHEMES = ("memory", "sqlite")


def open_broker(url: str, clock: Clock | None = None) -> Broker:
    """Open the store a URL names.

    >>> open_broker("memory://").url
    'memory://'
    """
    clock = clock or SystemClock()
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        from conveyor.brokers.memory import MemoryBroker

        return MemoryBroker(url, clock)
    if scheme == "sqlite":
        from conveyor.brokers.sqlite import SQLiteBroker

        return SQLiteBroker(url, clock)
    known = ", ".join(f"{s}://" for s in SCHEMES)
    raise ConfigurationError(
        f"unknown store URL {url!r}: the scheme {scheme + '://' if scheme else '(none)'} "
        f"is not one of {known}"
    )
