"""Taking back the messages of tasks the operator cancelled while they were queued: on Redis each message is found
on its queue's lists by its id and removed, so none stays behind (on a queue nobody reads, for ever). Bounded like
every broker probe: a broker that does not answer costs `timeout`, never a hang.

RabbitMQ cannot remove one message from a queue: there, as everywhere a message escapes this, the worker that takes
it finds its task cancelled and drops it without running it."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from orch.services.broker_probe import connected


@dataclass(frozen=True)
class QueuedMessage:
    queue: str
    message_id: str  # Dispatch.message_id: plan id, task id, attempt


def withdraw(broker_url: str, messages: Iterable[QueuedMessage], timeout: float) -> int | None:
    """Remove `messages` from their queues; how many were removed, or None when this broker cannot remove one
    message (RabbitMQ)."""
    by_queue: dict[str, set[str]] = {}
    for message in messages:
        by_queue.setdefault(message.queue, set()).add(message.message_id)
    if not by_queue:
        return 0
    with connected(broker_url, timeout) as conn:
        channel = conn.default_channel
        client = getattr(channel, "client", None)
        if client is None or not hasattr(client, "lrem"):
            return None
        removed = 0
        for queue, ids in by_queue.items():
            for key in _redis_lists(channel, queue):
                for raw in _matching(client, key, ids):
                    removed += int(client.lrem(key, 0, raw))
        return removed


PAGE = 1000  # a queue's list is read this many messages at a time: a long queue costs round trips, not memory


def _matching(client: Any, key: str, ids: set[str]) -> list[bytes | str]:
    """The messages of the list `key` whose id is in `ids`, read page by page (removed only once all is read, so
    that no removal shifts a page not yet read)."""
    found = []
    for start in range(0, int(client.llen(key)), PAGE):
        found += [raw for raw in client.lrange(key, start, start + PAGE - 1) if _message_id(raw) in ids]
    return found


def _redis_lists(channel: object, queue: str) -> list[str]:
    """The Redis lists of a queue: kombu keeps one per priority step (the plain name for the default priority)."""
    steps = getattr(channel, "priority_steps", [0])
    name_for = getattr(channel, "_q_for_pri", None)  # kombu's own naming of a priority's list
    if name_for is None:
        return [queue]
    return list(dict.fromkeys(str(name_for(queue, step)) for step in steps))


def _message_id(raw: bytes | str) -> str | None:
    try:
        payload = json.loads(raw)
    except ValueError:
        return None
    headers = payload.get("headers") if isinstance(payload, dict) else None
    found = headers.get("id") if isinstance(headers, dict) else None
    return found if isinstance(found, str) else None
