"""Probing the broker (`orch check`, the exporter's queue lengths): one connection whose connect and every read
and write give up after a short timeout, with no retry, so a broker that is down or does not answer costs
seconds, never a scrape or a hang."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


def probe_connection(url: str, timeout: float) -> Any:
    """A kombu Connection (not yet connected) bounded by `timeout` seconds per connect, read and write."""
    from kombu.connection import Connection

    if Connection(url).transport.driver_type == "amqp":  # type: ignore[no-untyped-call]
        options = {"read_timeout": timeout, "write_timeout": timeout}
    else:
        options = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    return Connection(url, connect_timeout=timeout, transport_options=options)  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def connected(url: str, timeout: float) -> Iterator[Any]:
    """A connection that has answered: connected once (no retry) and, on Redis, a PING answered (a Redis
    connection alone proves little)."""
    with probe_connection(url, timeout) as conn:
        conn.ensure_connection(max_retries=0, timeout=timeout)
        client = getattr(conn.default_channel, "client", None)
        if client is not None and hasattr(client, "ping"):
            client.ping()
        yield conn


@dataclass(frozen=True)
class QueueDepth:
    queue: str
    messages: int
    consumers: int | None  # None: the broker cannot tell (Redis)


def queue_depths(url: str, queues: Iterable[str], timeout: float) -> list[QueueDepth]:
    """Each queue's waiting messages by a passive declare: kombu sums Celery's priority sub-lists on Redis, and
    RabbitMQ returns its ready count and consumers. A queue the broker does not hold has none waiting."""
    with connected(url, timeout) as conn:
        is_amqp = conn.transport.driver_type == "amqp"
        depths = []
        channel = None
        try:
            for queue in queues:
                channel = channel or conn.channel()
                try:
                    declared = channel.queue_declare(queue=queue, passive=True)
                    messages, consumers = int(declared.message_count), int(declared.consumer_count)
                except conn.channel_errors as exc:
                    if not _not_found(exc):
                        raise
                    messages, consumers = 0, 0
                    if is_amqp:  # RabbitMQ closes a channel on a failed declare
                        _close(conn, channel)
                        channel = None
                depths.append(QueueDepth(queue, messages, consumers if is_amqp else None))
        finally:
            if channel is not None:
                _close(conn, channel)
        return depths


def _close(conn: Any, channel: Any) -> None:
    with contextlib.suppress(*conn.channel_errors, *conn.connection_errors):
        channel.close()


def _not_found(exc: BaseException) -> bool:
    return getattr(exc, "code", None) == 404 or "NOT_FOUND" in str(exc)
