"""Stores, chosen by URL scheme: ``memory://``, ``sqlite:///path.db``."""

from __future__ import annotations

from urllib.parse import urlsplit

from conveyor.brokers.base import Broker
from conveyor.clock import Clock, SystemClock
from conveyor.errors import ConfigurationError

SCHEMES = ("memory", "sqlite")


def check_url(url: str) -> None:
    """Refuse a malformed store URL without opening anything (no file, no socket)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        from conveyor.brokers.sqlite import parse_url

        parse_url(url)
    elif scheme not in SCHEMES:
        raise _unknown_scheme(url, scheme)


def _unknown_scheme(url: str, scheme: str) -> ConfigurationError:
    known = ", ".join(f"{s}://" for s in SCHEMES)
    return ConfigurationError(
        f"unknown store URL {url!r}: the scheme {scheme + '://' if scheme else '(none)'} "
        f"is not one of {known}"
    )


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
    raise _unknown_scheme(url, scheme)
