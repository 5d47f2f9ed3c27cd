"""Follow-ups and re-plans, decided without services: the block and file formats, the checks of a batch (fields,
ids, dependencies, cycles, limits per attempt, depth and plan, the planner type, no grant escalation), and what a
failed attempt of an `on_failure: replan` task becomes, and how a replacement rewires the plan."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orch.decisions.followups import (
    Author,
    Candidate,
    Grant,
    Limits,
    PlanShape,
    check_followups,
    check_replacement,
    grant_escalation,
    last_block,
    parse_tasks,
)
from orch.decisions.replan import REPLAN_DECLINED, ReplanState, inherited, rewire, settle
from orch.decisions.retry import Outcome
from orch.states import AttemptStatus, TaskStatus
from orch.store.growth import Writer, grant_of, read_tasks
from tests.helpers import registry

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
SHELL_GRANT = Grant("general-purpose", frozenset({"ANTHROPIC_API_KEY"}), frozenset({"ANTHROPIC_BASE_URL"}), "none")
AUTHOR = Author("build", SHELL_GRANT, depth=0)
PLAN = PlanShape({"build": TaskStatus.RUNNING, "setup": TaskStatus.SUCCEEDED, "old": TaskStatus.REPLACED})


def candidate(key: str, *after: str, grant: Grant = SHELL_GRANT) -> Candidate:
    return Candidate(f"follow-up {key!r}", key, tuple(after), grant)


def test_the_last_block_of_a_final_message_counts() -> None:
    message = (
        'first\n```orch-followups\n{"tasks": [{"id": "a", "title": "A"}]}\n```\nthen\n'
        '```orch-followups\n[{"id": "b", "title": "B"}]\n```\nbye'
    )
    block = last_block(message)
    assert block is not None
    assert parse_tasks(block) == ([{"id": "b", "title": "B"}], None)
    assert last_block("no block here") is None
    assert last_block("```json\n[]\n```") is None


def test_a_document_that_is_not_a_task_list_is_one_problem() -> None:
    assert parse_tasks("{not json")[1] is not None
    assert parse_tasks('{"tasks": 3}')[1] == 'follow-ups: give {"tasks": [...]} or a list of tasks'
    too_long = "[" + " " * (256 * 1024) + "]"
    assert "more than the" in str(parse_tasks(too_long)[1])


def test_valid_followups_pass_with_dependencies_on_the_plan_and_each_other() -> None:
    verdict = check_followups([candidate("docs", "build"), candidate("check", "docs", "setup")], AUTHOR, PLAN, Limits())
    assert verdict.accepted == ("docs", "check")
    assert verdict.problems == ()


def test_each_refused_followup_is_one_line_naming_it_and_its_dependants_go_with_it() -> None:
    verdict = check_followups(
        [
            candidate("build"),  # taken
            candidate("x", "nowhere"),
            candidate("y", "old"),  # replaced
            candidate("z", "x"),  # needs a refused one
            candidate("fine"),
        ],
        AUTHOR,
        PLAN,
        Limits(),
    )
    assert verdict.accepted == ("fine",)
    assert verdict.problems == (
        "follow-up 'build': the id is taken (ids are unique in a plan)",
        "follow-up 'x': depends on unknown task 'nowhere'",
        "follow-up 'y': depends on 'old', which was replaced",
        "follow-up 'z': depends on 'x', which is refused",
    )


def test_a_cycle_among_followups_refuses_them() -> None:
    verdict = check_followups(
        [candidate("a", "b"), candidate("b", "a"), candidate("c", "a"), candidate("d")], AUTHOR, PLAN, Limits()
    )
    assert verdict.accepted == ("d",)
    assert any("dependency cycle" in line for line in verdict.problems)
    assert "follow-up 'c': depends on 'a', which is refused" in verdict.problems


def test_limits_per_attempt_and_per_plan() -> None:
    batch = [candidate(f"t{i}") for i in range(5)]
    per_attempt = check_followups(batch, AUTHOR, PLAN, Limits(per_attempt=3))
    assert per_attempt.accepted == ("t0", "t1", "t2")
    assert per_attempt.problems == tuple(
        f"follow-up 't{i}': over the limit (ORCH_FOLLOWUPS_PER_TASK=3)" for i in (3, 4)
    )
    crowded = PlanShape(PLAN.statuses, followups=199)
    total = check_followups(batch, AUTHOR, crowded, Limits(total=200))
    assert total.accepted == ("t0",)
    assert "ORCH_FOLLOWUPS_TOTAL=200" in total.problems[0]


def test_followups_deeper_than_the_limit_are_refused() -> None:
    deep = Author("build", SHELL_GRANT, depth=3)
    verdict = check_followups([candidate("a"), candidate("b")], deep, PLAN, Limits(depth=3))
    assert verdict.accepted == ()
    assert verdict.problems == tuple(
        f"follow-up {k!r}: follow-ups 4 deep, more than ORCH_FOLLOWUPS_DEPTH=3" for k in ("a", "b")
    )
    assert check_followups([candidate("a")], Author("build", SHELL_GRANT, depth=2), PLAN, Limits(depth=3)).accepted


def test_no_grant_escalation_secrets_env_or_network() -> None:
    more_secrets = Grant("other", frozenset({"ANTHROPIC_API_KEY", "OTHER_TEAM_TOKEN"}), SHELL_GRANT.env, "none")
    more_env = Grant("other", SHELL_GRANT.secrets, frozenset({"ANTHROPIC_BASE_URL", "AWS_PROFILE"}), "none")
    wider = Grant("general-purpose", SHELL_GRANT.secrets, SHELL_GRANT.env, "host")
    assert "has secrets" in str(grant_escalation(more_secrets, SHELL_GRANT))
    assert "AWS_PROFILE" in str(grant_escalation(more_env, SHELL_GRANT))
    assert "network host, wider than its author's (none)" in str(grant_escalation(wider, SHELL_GRANT))
    assert grant_escalation(Grant("less", frozenset(), frozenset(), "none"), SHELL_GRANT) is None
    verdict = check_followups([candidate("steal", grant=more_secrets)], AUTHOR, PLAN, Limits())
    assert verdict.accepted == ()
    assert verdict.problems[0].startswith("follow-up 'steal': agent type 'other' has secrets")


def test_no_task_runs_as_the_planner() -> None:
    planner = Grant("planner", SHELL_GRANT.secrets, SHELL_GRANT.env, "none")
    verdict = check_followups([candidate("plan-more", grant=planner)], AUTHOR, PLAN, Limits())
    assert verdict.problems == ("follow-up 'plan-more': no task runs as the planner agent type",)


def _read(raw: list[Any], executor: str = "shell") -> list[Candidate]:
    writer = Writer("build", "general-purpose", executor)
    return [c for c, _ in read_tasks(raw, writer, registry(), "follow-up")]


def test_written_tasks_are_read_strictly_and_routed_with_their_grant() -> None:
    read = _read(
        [
            {"id": "ok", "title": "list files", "command": "ls"},
            {"id": "agentic", "title": "write the docs", "agent": "documentation-writer"},
            {"id": "bad", "title": "x", "executor": "claude-code"},  # not a field an agent may write
            {"id": "who", "title": "x", "agent": "nobody"},
            "not a mapping",
        ]
    )
    assert read[0].problem is None and read[0].grant is not None and read[0].grant.network == "none"
    assert read[1].grant is not None and read[1].grant.network == "host"  # claude-code: it calls the model
    assert read[2].problem == "unknown field 'executor'"
    assert str(read[3].problem).startswith("unknown agent type 'nobody'")
    assert read[4].label == "follow-up [4]"
    author = Author("build", grant_of(registry().get("general-purpose"), "shell"))
    verdict = check_followups(read, author, PLAN, Limits())
    assert verdict.accepted == ("ok",)  # a shell task may not ask for an agent with the network
    assert any(line.startswith("follow-up 'agentic': it would run with network host") for line in verdict.problems)


def test_a_replacement_is_all_or_nothing() -> None:
    good = check_replacement([candidate("part-1"), candidate("part-2", "part-1")], AUTHOR, PLAN, Limits())
    assert good.accepted == ("part-1", "part-2") and not good.problems
    bad = check_replacement([candidate("part-1"), candidate("part-2", "build")], AUTHOR, PLAN, Limits())
    assert bad.accepted == ()
    assert bad.problems == ("follow-up 'part-2': depends on 'build', which it replaces",)
    assert check_replacement([], AUTHOR, PLAN, Limits()).problems == ("replacement: it has no tasks",)


FAILED = Outcome(TaskStatus.FAILED, AttemptStatus.FAILED, None, "exit status 1 (retries exhausted (1 attempt))")


def test_a_task_whose_retries_are_spent_is_replanned_while_it_may_be() -> None:
    settled = settle(FAILED, ReplanState("replan", 0, 1), replanning=False, failure_class="exit_status")
    assert settled.outcome.task_status is TaskStatus.RETRY_WAIT and settled.outcome.not_before is None
    assert settled.replanning and settled.replans == 1 and settled.starts_replan
    spent = settle(FAILED, ReplanState("replan", 1, 1), replanning=False, failure_class="exit_status")
    assert spent.outcome.task_status is TaskStatus.FAILED and not spent.replanning
    assert settle(FAILED, ReplanState("fail", 0, 1), False, "exit_status").outcome is FAILED


def test_a_replan_attempt_retries_when_the_planner_is_away_and_fails_when_it_declines() -> None:
    waiting = Outcome(TaskStatus.RETRY_WAIT, AttemptStatus.FAILED, NOW, "overloaded (retry 1 of 2)")
    away = settle(waiting, ReplanState("replan", 1, 1), replanning=True, failure_class="overloaded")
    assert away.outcome is waiting and away.replanning
    declined = settle(waiting, ReplanState("replan", 1, 1), replanning=True, failure_class=REPLAN_DECLINED)
    assert declined.outcome.task_status is TaskStatus.FAILED and not declined.replanning
    spent = settle(FAILED, ReplanState("replan", 1, 1), replanning=True, failure_class="overloaded")
    assert spent.outcome.task_status is TaskStatus.FAILED and not spent.replanning


def test_a_replacement_takes_the_failed_tasks_place_in_the_plan() -> None:
    rewiring, problems = rewire(
        "split-me",
        ("setup",),
        ("after-it",),
        {"after-it", "last"},
        {"part-1": (), "part-2": (), "join": ("part-1", "part-2"), "side": ("setup",)},
    )
    assert not problems and rewiring is not None
    assert rewiring.after["part-1"] == ("setup",)  # no dependency inside: the failed task's
    assert rewiring.after["join"] == ("part-1", "part-2")
    assert rewiring.sinks == ("join", "side")
    assert rewiring.dependants == ("after-it",)
    cycle, why = rewire("split-me", (), ("after-it",), {"after-it"}, {"part": ("after-it",)})
    assert cycle is None
    assert why == ["replacement task 'part': depends on 'after-it', which waits for 'split-me': a cycle"]


def test_a_replacement_inherits_the_replans_left_so_max_replans_bounds_the_chain() -> None:
    # the replaced task's fields once this re-plan is counted (replans 1 of max_replans 3): two left
    assert inherited(ReplanState("replan", 1, 3)) == ReplanState("replan", 0, 2)
    assert inherited(ReplanState("replan", 2, 3)) == ReplanState("replan", 0, 1)
    assert inherited(ReplanState("replan", 3, 3)) == ReplanState("fail", 0, 0)  # none left: they fail as any task
    assert inherited(ReplanState("replan", 1, 1)) == ReplanState("fail", 0, 0)  # the default: one re-plan in all
    # a chain: each link re-planned once uses one of the first task's re-plans; the third link's tasks fail
    state = ReplanState("replan", 1, 3)
    links = 1
    while (state := inherited(state)).on_failure == "replan":
        state = ReplanState(state.on_failure, state.replans + 1, state.max_replans)  # its own first re-plan
        links += 1
    assert links == 3


def test_only_well_formed_ids_reach_the_store_a_lone_surrogate_is_a_refused_followup() -> None:
    from orch.store.growth import _names

    raw = [
        {"id": "x\ud800", "title": "t", "command": "true"},
        {"id": "y", "title": "t", "command": "true", "after": ["\ud800", "ok", "two words", "a\n"]},
    ]
    assert _names(raw) == {"y", "ok"}
    read = _read(raw)
    assert read[0].problem is not None and read[1].problem is not None
    verdict = check_followups(read, AUTHOR, PLAN, Limits())
    assert verdict.accepted == ()
    assert [line.split(":")[0] for line in verdict.problems] == ["follow-up 'x\\ud800'", "follow-up 'y'"]
    assert all(line.isascii() for line in verdict.problems)  # the store can encode it


def test_the_followups_file_is_read_never_through_a_link(tmp_path: Path) -> None:
    from workers.executors.followups import read_followups

    written = tmp_path / "followups.json"
    assert read_followups(written) is None  # absent
    written.write_text("  \n")
    assert read_followups(written) is None  # empty
    written.write_text('[{"id": "a", "title": "A"}]')
    assert read_followups(written) == '[{"id": "a", "title": "A"}]'
    secret = tmp_path / "secret"
    secret.write_text("only the worker's")
    link = tmp_path / "link.json"
    link.symlink_to(secret)
    assert read_followups(link) is None
