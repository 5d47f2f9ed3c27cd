"""orch cancel's withdrawal of queued messages from Redis (orch/dispatch/withdraw.py): every copy of a cancelled
task's message goes, however long the queue, and no other message does."""

from __future__ import annotations

import json

import redis

from orch.dispatch.withdraw import PAGE, QueuedMessage, withdraw


def message(message_id: str) -> bytes:
    return json.dumps({"body": "", "headers": {"id": message_id, "task": "orch.run_task"}}).encode()


def test_every_copy_goes_across_pages_and_nothing_else(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    total = PAGE * 2 + 500
    wanted = {f"plan-x:t{n}:1" for n in (0, PAGE - 1, PAGE, PAGE * 2 + 7)}  # on the first, second and third page
    client.rpush("agent.testing", *[message(f"plan-x:t{n}:1") for n in range(total)])
    client.rpush("agent.testing", message(f"plan-x:t{PAGE}:1"))  # a re-sent copy, at the end
    client.rpush("agent.other", message("plan-x:t0:1"))  # the same id on a queue not asked about
    removed = withdraw(redis_url, [QueuedMessage("agent.testing", m) for m in wanted], timeout=5)
    assert removed == len(wanted) + 1
    left = [json.loads(raw)["headers"]["id"] for raw in client.lrange("agent.testing", 0, -1)]
    assert len(left) == total - len(wanted) and not wanted & set(left)
    assert client.llen("agent.other") == 1


def test_nothing_asked_touches_nothing(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.rpush("agent.testing", message("plan-x:a:1"))
    assert withdraw(redis_url, [], timeout=5) == 0
    assert client.llen("agent.testing") == 1
