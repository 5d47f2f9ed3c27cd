"""Prompts: a pure function from a task, its dependencies' results (the handoff) and, on a retry, why the last
attempt failed, to the text an agent is given. The templates live in config/prompts.yaml."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from string import Template

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from orch.errors import ConfigInvalid

HANDOFF_RESULT_CHARS = 2000  # of each dependency's result summary
FAILURE_DETAIL_CHARS = 4000  # of the failed attempt's output tail


class PromptTemplates(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    system: str
    task: str
    sections: dict[str, str]


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


def _clip(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-limit:]


def render_handoff(handoffs: Sequence[Handoff]) -> str:
    parts = []
    for handoff in handoffs:
        lines = [f"### {handoff.key} ({handoff.agent}): {handoff.title}"]
        if handoff.result.strip():
            lines.append(_clip(handoff.result, HANDOFF_RESULT_CHARS))
        if handoff.files_changed:
            lines.append("Files changed: " + ", ".join(handoff.files_changed))
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


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
) -> str:
    values = {
        "task_id": task_id,
        "title": title,
        "description": description.strip(),
        "success": success.strip(),
        "files": "\n".join(f"- {f}" for f in files),
        "handoff": render_handoff(handoffs),
    }
    parts = [Template(templates.task).safe_substitute(values).strip()]
    for section in ("success", "files", "handoff"):
        if values[section] and section in templates.sections:
            parts.append(Template(templates.sections[section]).safe_substitute(values).strip())
    if previous_failure is not None and "retry" in templates.sections:
        retry = {
            "attempt": str(previous_failure.attempt),
            "reason": previous_failure.reason.strip(),
            "details": _clip(previous_failure.details, FAILURE_DETAIL_CHARS),
        }
        parts.append(Template(templates.sections["retry"]).safe_substitute(retry).strip())
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
