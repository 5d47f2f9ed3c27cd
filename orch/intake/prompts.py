"""Prompts: a pure function from a task, its dependencies' results (the handoff), the plan around it and, on a
retry, why the last attempt failed, to the text an agent is given. The templates live in config/prompts.yaml.

Plans and agents are untrusted: their strings (titles, descriptions, results, a target's context file) are values
substituted once into the templates, never templates themselves, and each is clipped to a bound."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from string import Template

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from orch.errors import ConfigInvalid

HANDOFF_RESULT_CHARS = 2000  # of each dependency's result summary
FAILURE_DETAIL_CHARS = 4000  # of the failed attempt's output tail
FAILURE_REASON_CHARS = 2000  # of the failed attempt's error (its reason)
FILES_LISTED = 50  # files named in each dependency's "Files changed"; the rest are counted
FILE_CHARS = 300  # of each of those paths
GOAL_CHARS = 4000  # of the plan's description (its goal)
PLAN_NAME_CHARS = 128
OWN_TITLE_CHARS = 500  # of the task's own title, as a plan's titles are bounded
TITLE_CHARS = 160  # of each title in the lists of tasks waiting on this one and running beside it
LISTED_TASKS = 20  # tasks named in each of those lists; the rest are counted
CONTEXT_CHARS = 100_000  # of a target's context file (the file is read at most 100 kB)

# A section is added when its value is not empty; `retry` when there was a previous failure, `followups` when the
# agent may add tasks by its final message.
SECTIONS = ("success", "files", "plan", "handoff", "next", "beside", "context", "retry", "followups")


class PromptTemplates(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    system: str
    task: str
    sections: dict[str, str]

    @field_validator("sections")
    @classmethod
    def _known_sections(cls, sections: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(sections) - set(SECTIONS))
        if unknown:
            raise ValueError(f"unknown section {', '.join(unknown)} (known: {', '.join(SECTIONS)})")
        return sections


@dataclass(frozen=True)
class Handoff:
    """What one finished dependency did: its result summary and the files it changed."""

    key: str
    title: str
    agent: str
    result: str
    files_changed: tuple[str, ...] = ()


@dataclass(frozen=True)
class PreviousFailure:
    attempt: int
    reason: str
    details: str = ""


@dataclass(frozen=True)
class TaskRef:
    key: str
    title: str


@dataclass(frozen=True)
class TaskList:
    """Some tasks, by id and title (at most a bound of them), and how many there are in all."""

    tasks: tuple[TaskRef, ...] = ()
    total: int = 0


@dataclass(frozen=True)
class PlanContext:
    """The plan a task serves: its name and goal, the tasks waiting on this one (its direct dependants), the tasks
    running beside it, and the context file of the repository it works in."""

    name: str = ""
    goal: str = ""
    dependants: TaskList = field(default_factory=TaskList)
    running: TaskList = field(default_factory=TaskList)
    repository_context: str = ""


def _clip(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-limit:]


def _clip_head(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit].rstrip() + "…"


def one_line(text: str, limit: int) -> str:
    """A title as one line (a title cannot start a section of its own), clipped."""
    return _clip_head(" ".join(text.split()), limit)


def _unbroken(text: str) -> str:
    """`text` with each line break (every character str.splitlines breaks at) a space; tabs and runs of spaces kept."""
    return " ".join(text.splitlines())


def render_handoff(handoffs: Sequence[Handoff]) -> str:
    """Each dependency's header (its title one line: a title an agent wrote cannot open a section), its result
    and the files it changed, each clipped."""
    parts = []
    for handoff in handoffs:
        lines = [f"### {handoff.key} ({handoff.agent}): {one_line(handoff.title, TITLE_CHARS)}"]
        if handoff.result.strip():
            lines.append(_clip(handoff.result, HANDOFF_RESULT_CHARS))
        if handoff.files_changed:
            lines.append("Files changed: " + render_files(handoff.files_changed))
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def render_files(files: Sequence[str]) -> str:
    """At most FILES_LISTED paths, each one line and clipped, then how many more there are."""
    shown = [one_line(path, FILE_CHARS) for path in files[:FILES_LISTED]]
    more = len(files) - len(shown)
    return ", ".join(shown) + (f", and {more} more" if more > 0 else "")


def render_tasks(listed: TaskList) -> str:
    """`- id: title` per task, at most LISTED_TASKS of them, then how many more there are."""
    shown = listed.tasks[:LISTED_TASKS]
    lines = [f"- {task.key}: {one_line(task.title, TITLE_CHARS)}" for task in shown]
    more = max(listed.total, len(listed.tasks)) - len(shown)
    if more > 0:
        lines.append(f"- and {more} more")
    return "\n".join(lines)


def build_prompt(
    templates: PromptTemplates,
    *,
    task_id: str,
    title: str,
    description: str,
    success: str,
    files: Sequence[str],
    handoffs: Sequence[Handoff],
    previous_failure: PreviousFailure | None,
    plan: PlanContext | None = None,
    followups: bool = False,
) -> str:
    plan = plan or PlanContext()
    values = {
        "task_id": task_id,
        "title": _clip_head(_unbroken(title), OWN_TITLE_CHARS),  # the task's own, as written but on one line
        "description": description.strip(),
        "success": success.strip(),
        "files": "\n".join(f"- {f}" for f in files),
        "handoff": render_handoff(handoffs),
        "plan_name": one_line(plan.name, PLAN_NAME_CHARS),
        "plan": _clip_head(plan.goal, GOAL_CHARS),
        "next": render_tasks(plan.dependants),
        "beside": render_tasks(plan.running),
        "context": _clip_head(plan.repository_context, CONTEXT_CHARS),
        "retry": "",
        "followups": "yes" if followups else "",
    }
    if previous_failure is not None:
        values |= {
            "retry": "yes",
            "attempt": str(previous_failure.attempt),
            "reason": _clip_head(previous_failure.reason, FAILURE_REASON_CHARS),
            "details": _clip(previous_failure.details, FAILURE_DETAIL_CHARS),
        }
    # One substitution of each template: a value's own `$name` stays as written.
    parts = [Template(templates.task).safe_substitute(values).strip()]
    for section, template in templates.sections.items():
        if values[section]:
            parts.append(Template(template).safe_substitute(values).strip())
    return "\n\n".join(parts) + "\n"


def build_system_prompt(templates: PromptTemplates, agent: str, description: str, extra: str) -> str:
    text = Template(templates.system).safe_substitute({"agent": agent, "description": description}).strip()
    return f"{text}\n\n{extra.strip()}" if extra.strip() else text


@lru_cache(maxsize=4)
def load_templates(config_dir: Path) -> PromptTemplates:
    path = config_dir / "prompts.yaml"
    try:
        return PromptTemplates.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise ConfigInvalid(f"{path}: cannot read prompt templates: {exc.strerror}") from None
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigInvalid(f"{path}: invalid prompt templates: {exc}") from None
