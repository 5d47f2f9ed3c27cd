"""The python executor's target in the bad-plans scenario: hands back, untouched, the texts it was given."""

from __future__ import annotations


def echo(context: dict[str, object]) -> dict[str, object]:
    return {key: context[key] for key in ("task_id", "title", "description")}
