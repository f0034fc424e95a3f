"""Stores, chosen by URL scheme: ``memory://``, ``sqlite:///path.db``, ``redis://host/0``
(also ``rediss://`` and ``redis+sentinel://``; Redis Cluster with ``?cluster=1``)."""

from __future__ import annotations

from types import ModuleType
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from conveyor.brokers.base import Broker
from conveyor.clock import Clock, SystemClock
from conveyor.errors import ConfigurationError

SCHEMES = ("memory", "sqlite", "redis", "rediss", "redis+sentinel")
REDIS_SCHEMES = ("redis", "rediss", "redis+sentinel")


def mask(url: str) -> str:
    """``url`` with any password in it replaced by ``***``, for messages and logs."""
    parts = urlsplit(url)
    user, at, hosts = parts.netloc.rpartition("@")
    if not at and "password" not in parts.query:
        return url
    netloc = f"{user.partition(':')[0]}:***@{hosts}" if at and ":" in user else parts.netloc
    query = [(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query, True)]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe="*"), ""))


def check_url(url: str) -> None:
    """Refuse a malformed store URL without opening anything (no file, no socket)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        from conveyor.brokers.sqlite import parse_url

        parse_url(url)
    elif scheme in REDIS_SCHEMES:
        _redis_store().parse_url(url)
    elif scheme not in SCHEMES:
        raise _unknown_scheme(url, scheme)


def _unknown_scheme(url: str, scheme: str) -> ConfigurationError:
    known = ", ".join(f"{s}://" for s in SCHEMES)
    return ConfigurationError(
        f"unknown store URL {mask(url)!r}: the scheme {scheme + '://' if scheme else '(none)'} "
        f"is not one of {known}"
    )


def _redis_store() -> ModuleType:
    """The Redis store's module, imported only when a Redis URL is used."""
    try:
        from conveyor.brokers import redis_store
    except ImportError as exc:
        raise ConfigurationError(
            f"the Redis store needs the redis package ({exc}): pip install 'conveyor-jobs[redis]'"
        ) from exc
    return redis_store


def open_broker(url: str, clock: Clock | None = None, *, create: bool = True) -> Broker:
    """Open the store a URL names.

    ``create=False`` is for commands that only read or change existing jobs
    (``conveyor stats``, ``jobs``, ``retry``, ``cancel``): they must never
    create a store, so a mistyped SQLite path is an error, not a new empty
    database.

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

        return SQLiteBroker(url, clock, create=create)
    if scheme in REDIS_SCHEMES:
        broker: Broker = _redis_store().RedisBroker(url, clock)
        return broker
    raise _unknown_scheme(url, scheme)
