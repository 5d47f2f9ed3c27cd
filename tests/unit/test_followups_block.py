"""The ```orch-followups block of an agent's final message, found in work linear in the message (a final message
may be megabytes, written by a hostile agent)."""

from __future__ import annotations

import pytest

from orch.decisions.followups import last_block, parse_tasks

HOSTILE_BYTES = 4 * 1024 * 1024  # as large as a Claude Code final result can be


def test_the_block_ends_at_its_own_closing_fence_not_a_later_one() -> None:
    message = '```orch-followups\n[{"id": "a", "title": "A"}]\n```\nand some code:\n```python\nx = 1\n```\n'
    block = last_block(message)
    assert block == '[{"id": "a", "title": "A"}]\n'
    assert parse_tasks(block) == ([{"id": "a", "title": "A"}], None)


def test_an_opening_with_no_closing_fence_is_no_block() -> None:
    assert last_block('done\n```orch-followups\n[{"id": "a", "title": "A"}]\n') is None
    # an earlier complete block still counts when a later one is left open
    message = '```orch-followups\n[]\n```\nthen\n```orch-followups\n[{"id": "b"}]\n'
    assert last_block(message) == "[]\n"


def test_indented_fences_and_a_closing_fence_at_the_very_end() -> None:
    assert last_block('  ```orch-followups  \n{"tasks": []}\n  ```') == '{"tasks": []}\n'


def test_a_tag_inside_a_line_opens_no_block() -> None:
    assert last_block("see ```orch-followups\n[]\n```\n") is None


@pytest.mark.timeout(60)  # the old pattern took about an hour of CPU on this message; this takes milliseconds
def test_megabytes_of_openings_without_a_closing_fence_are_read_in_linear_work() -> None:
    line = "```orch-followups\n"
    message = line * (HOSTILE_BYTES // len(line))
    assert last_block(message) is None
    # the same, with one closing fence at the very end: the last opening is the block, and it is empty
    assert last_block(message + "```") == ""


@pytest.mark.timeout(60)
def test_megabytes_of_fences_around_one_real_block_at_the_end() -> None:
    noise = "```orch-followups\n```\n" * (HOSTILE_BYTES // 24)
    block = last_block(noise + '```orch-followups\n[{"id": "z", "title": "Z"}]\n```\n')
    assert block is not None
    assert parse_tasks(block) == ([{"id": "z", "title": "Z"}], None)
