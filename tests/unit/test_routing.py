"""Keyword routing: explicit agent, whole-word case-insensitive scoring, ties by file order, the fallback."""

from __future__ import annotations

from pathlib import Path

import pytest

from orch.intake.agents import load_agents_file, parse_agents
from orch.intake.routing import KeywordIndex, count_keywords, route

REGISTRY = load_agents_file(Path(__file__).parents[2] / "config" / "agents.yaml")


def registry(*types: tuple[str, list[str]]):
    """A hand-made registry: (name, keywords) in file order, plus the fallback type."""
    agent_types = [{"name": name, "keywords": keywords} for name, keywords in types]
    return parse_agents({"agent_types": [*agent_types, {"name": "general-purpose"}]})


def test_explicit_agent_wins_over_keywords() -> None:
    decision = route("Deploy the docker container with kubernetes", REGISTRY, explicit="documentation-writer")
    assert decision.agent == "documentation-writer"
    assert decision.reason == "explicit agent: documentation-writer"


@pytest.mark.parametrize(
    ("text", "agent"),
    [
        ("Add a REST API endpoint for users", "backend-development"),
        ("Write a Dockerfile and a helm chart", "devops-engineer"),
        ("Fix the XSS hole and rotate the JWT secrets", "security-specialist"),
        ("Build the React login form component", "frontend-development"),
        ("Add a migration for the users table", "database-architect"),
        ("Update the README and the changelog", "documentation-writer"),
        ("Add Prometheus metrics and a Grafana dashboard", "observability"),
        ("Profile the memory leak in the cache", "application-performance"),
    ],
)
def test_shipped_registry_routes_by_keywords(text: str, agent: str) -> None:
    assert route(text, REGISTRY).agent == agent


def test_highest_score_wins_regardless_of_file_order() -> None:
    # backend comes first in the file, but testing has more matches
    decision = route("Write unit tests and coverage checks for the api", REGISTRY)
    assert decision.agent == "testing-specialist"
    scores = {name: score for name, score, _ in decision.scores}
    assert scores["testing-specialist"] > scores["backend-development"] == 1
    assert decision.scores[0][0] == "testing-specialist"


def test_whole_words_only() -> None:
    reg = registry(("tester", ["test"]), ("api-people", ["api"]))
    assert route("testing the parser", reg).agent == "general-purpose"
    assert route("attest that the contest passed", reg).agent == "general-purpose"
    assert route("an apiary for bees", reg).agent == "general-purpose"
    assert route("test the parser", reg).agent == "tester"
    assert route("the api, again", reg).agent == "api-people"


def test_testing_and_test_are_different_keywords() -> None:
    reg = registry(("short", ["test"]), ("long", ["testing"]))
    assert route("more testing needed", reg).agent == "long"
    assert route("one more test", reg).agent == "short"


def test_matching_is_case_insensitive() -> None:
    assert route("EXPOSE THE API", REGISTRY).agent == "backend-development"
    reg = registry(("ops", ["Kubernetes"]))
    assert route("move it to kubernetes", reg).agent == "ops"


def test_punctuation_separates_words() -> None:
    assert route("Set up CI/CD", REGISTRY).agent == "devops-engineer"
    assert route("(api)", REGISTRY).agent == "backend-development"
    assert route("front-end polish", REGISTRY).agent == "frontend-development"


def test_multi_word_keywords() -> None:
    reg = registry(("words", ["unit", "tests"]), ("phrase", ["unit tests", "memory leak"]))
    index = KeywordIndex.build(reg)
    assert index.max_words == 2
    assert count_keywords("Write Unit   Tests now", index) == {"unit": 1, "tests": 1, "unit tests": 1}
    assert count_keywords("a unit of tests", index) == {"unit": 1, "tests": 1}
    assert route("find the memory leak", reg).agent == "phrase"
    assert route("memory is leaking", reg).agent == "general-purpose"


def test_count_keywords_counts_repeats() -> None:
    index = KeywordIndex.build(REGISTRY)
    assert count_keywords("api api API and an apiary", index)["api"] == 3


def test_ties_go_to_the_type_earlier_in_the_file() -> None:
    first = registry(("alpha", ["deploy"]), ("beta", ["docs"]))
    second = registry(("beta", ["docs"]), ("alpha", ["deploy"]))
    text = "deploy the docs"
    assert route(text, first).agent == "alpha"
    assert route(text, second).agent == "beta"
    assert "tie with beta" in route(text, first).reason


def test_a_keyword_shared_by_two_types_ties_by_file_order() -> None:
    reg = registry(("first", ["shared"]), ("second", ["shared"]))
    decision = route("shared work", reg)
    assert decision.agent == "first"
    assert [name for name, _, _ in decision.scores] == ["first", "second"]


def test_shipped_tie_is_broken_by_agents_yaml_order() -> None:
    # one backend keyword, one testing keyword: backend-development is listed first
    decision = route("test the api", REGISTRY)
    assert decision.agent == "backend-development"
    assert "tie with testing-specialist" in decision.reason


def test_no_match_goes_to_the_fallback() -> None:
    decision = route("Ponder the meaning of life", REGISTRY)
    assert decision.agent == "general-purpose" == REGISTRY.fallback
    assert decision.reason == "no keyword matched: fallback type"
    assert decision.scores == ()


def test_empty_text_goes_to_the_fallback() -> None:
    assert route("", REGISTRY).agent == "general-purpose"


def test_reason_names_the_matched_keywords_and_counts() -> None:
    decision = route("Dockerfile for the docker image, docker compose too", REGISTRY)
    assert decision.agent == "devops-engineer"
    assert decision.reason == "score 3 from keywords: docker x2, dockerfile"


def test_prebuilt_index_gives_the_same_decision() -> None:
    index = KeywordIndex.build(REGISTRY)
    text = "Add unit tests for the REST endpoint"
    assert route(text, REGISTRY, index=index) == route(text, REGISTRY)


@pytest.mark.parametrize(
    ("text", "weak"),
    [
        ("Fix the package layout", "one keyword ('layout')"),  # one generic word
        ("Type-check the package", "one keyword ('check')"),
        ("Document the api endpoint in the guide", "tie with documentation-writer"),
        ("api endpoint handler server docs guide readme", "near tie with documentation-writer (score 3)"),
        ("Add JWT authentication to the login endpoint", None),  # 2 to 1: a clear lead
        ("Deploy the docker container", None),
        ("make it nice", None),  # the fallback is a choice, not a weak match
    ],
)
def test_weak_routes_are_a_single_keyword_or_a_near_tie(text: str, weak: str | None) -> None:
    from orch.intake.routing import weakness

    assert weakness(route(text, REGISTRY)) == weak
    assert weakness(route(text, REGISTRY, explicit="devops-engineer")) is None
