"""Prompts (handoff, retry reason, templates from config/) and prices (per-million rates, dated model ids)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orch.intake.prices import Price, Usage, cost_usd, load_prices, price_for
from orch.intake.prompts import Handoff, PreviousFailure, build_prompt, build_system_prompt, load_templates

CONFIG = Path(__file__).resolve().parents[2] / "config"


def prompt(**overrides: object) -> str:
    values: dict[str, object] = {
        "task_id": "build", "title": "Implement the endpoints", "description": "Use FastAPI.", "success": "",
        "files": [], "handoffs": [], "previous_failure": None,
    }  # fmt: skip
    values.update(overrides)
    return build_prompt(load_templates(CONFIG), **values)  # type: ignore[arg-type]


def test_a_bare_task_prompt_has_only_what_the_task_says() -> None:
    text = prompt()
    assert text.startswith("# Task build: Implement the endpoints")
    assert "Use FastAPI." in text
    for heading in ("Success criteria", "Files you may change", "What the tasks before you did", "failed"):
        assert heading not in text


def test_success_files_and_handoffs_appear_in_their_sections() -> None:
    text = prompt(
        success="tests pass",
        files=["server/api.py", "tests/**"],
        handoffs=[Handoff("design", "Design it", "security-specialist", "Chose RS256.", ("docs/design.md",))],
    )
    assert "## Success criteria\ntests pass" in text
    assert "- server/api.py\n- tests/**" in text
    assert "### design (security-specialist): Design it\nChose RS256.\nFiles changed: docs/design.md" in text


def test_a_retry_prompt_says_why_the_last_attempt_failed_with_the_output_clipped() -> None:
    text = prompt(previous_failure=PreviousFailure(2, "command failed: exit status 1", "x" * 10_000 + "END"))
    assert "## Your previous attempt (2) failed\ncommand failed: exit status 1" in text
    assert text.rstrip().endswith("END") and len(text) < 5_000


def test_the_system_prompt_names_the_agent_type_and_appends_its_own_text() -> None:
    templates = load_templates(CONFIG)
    text = build_system_prompt(templates, "security-specialist", "Authentication and audits", "Never log tokens.")
    assert "security-specialist" in text and "Authentication and audits" in text
    assert text.endswith("Never log tokens.")


def test_cost_is_tokens_times_the_per_million_rates() -> None:
    price = Price(input=3, output=15, cache_write=3.75, cache_read=0.3)
    assert cost_usd(Usage(1_000_000, 0), price) == pytest.approx(3.0)
    assert cost_usd(Usage(2000, 400, 100, 500), price) == pytest.approx((6000 + 6000 + 375 + 150) / 1_000_000)


def test_dated_model_ids_take_their_undated_price_and_unknown_models_get_none() -> None:
    prices = load_prices(CONFIG)
    assert price_for("claude-sonnet-4-5-20250929", prices) == prices["claude-sonnet-4-5"]
    assert price_for("claude-opus-4-9", prices) is None  # never the price of a shorter prefix
    assert price_for("gpt-4", prices) is None


def test_the_shipped_agent_types_default_to_a_priced_model() -> None:
    from orch.intake.agents import load_agents_file

    prices = load_prices(CONFIG)
    for agent in load_agents_file(CONFIG / "agents.yaml"):
        assert price_for(agent.model, prices) is not None, agent.name
        assert agent.secrets == ("ANTHROPIC_API_KEY",)
