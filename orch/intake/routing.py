"""Keyword routing: a pure function from a task's text to an agent type, with its reasons."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from orch.intake.agents import AgentRegistry, normalise_phrase


@dataclass(frozen=True)
class RouteDecision:
    agent: str
    reason: str
    # per agent type that matched anything: (type, score, {keyword: count}), best first
    scores: tuple[tuple[str, int, dict[str, int]], ...]


@dataclass(frozen=True)
class KeywordIndex:
    """Phrase -> agent types carrying it, and the longest phrase in words, built once per registry."""

    phrases: dict[str, tuple[str, ...]]
    max_words: int

    @classmethod
    def build(cls, registry: AgentRegistry) -> KeywordIndex:
        phrases: dict[str, list[str]] = {}
        for agent in registry:
            for keyword in agent.keywords:
                owners = phrases.setdefault(keyword, [])
                if agent.name not in owners:
                    owners.append(agent.name)
        max_words = max((k.count(" ") + 1 for k in phrases), default=1)
        return cls({k: tuple(v) for k, v in phrases.items()}, max_words)


def count_keywords(text: str, index: KeywordIndex) -> Counter[str]:
    """How often each keyword occurs in `text` as whole words, case-insensitively."""
    words = normalise_phrase(text).split()
    found: Counter[str] = Counter()
    for size in range(1, index.max_words + 1):
        for start in range(len(words) - size + 1):
            phrase = " ".join(words[start : start + size])
            if phrase in index.phrases:
                found[phrase] += 1
    return found


def route(
    text: str, registry: AgentRegistry, explicit: str | None = None, index: KeywordIndex | None = None
) -> RouteDecision:
    """The agent type for a task: `explicit` wins, else the best keyword score (ties: file order)."""
    if explicit:
        return RouteDecision(explicit, f"explicit agent: {explicit}", ())
    index = index or KeywordIndex.build(registry)
    found = count_keywords(text, index)
    per_type: dict[str, dict[str, int]] = {}
    for phrase, count in found.items():
        for owner in index.phrases[phrase]:
            per_type.setdefault(owner, {})[phrase] = count
    order = {name: i for i, name in enumerate(registry.names)}
    ranked = sorted(
        ((name, sum(hits.values()), hits) for name, hits in per_type.items()),
        key=lambda row: (-row[1], order[row[0]]),
    )
    if not ranked:
        return RouteDecision(registry.fallback, "no keyword matched: fallback type", ())
    best, score, hits = ranked[0]
    matched = ", ".join(f"{k} x{n}" if n > 1 else k for k, n in sorted(hits.items()))
    reason = f"score {score} from keywords: {matched}"
    if len(ranked) > 1 and ranked[1][1] == score:
        reason += f" (tie with {ranked[1][0]}, broken by order in agents.yaml)"
    return RouteDecision(best, reason, tuple(ranked))


def weakness(decision: RouteDecision) -> str | None:
    """Why a keyword route may well not be the type meant, or None: a tie or near tie with the runner-up (within a
    quarter of the score), or a single keyword found once. An explicit `agent:` and the fallback are never weak."""
    if not decision.scores:
        return None
    _, score, hits = decision.scores[0]
    if len(decision.scores) > 1:
        runner_up, runner_score, _ = decision.scores[1]
        if runner_score == score:
            return f"tie with {runner_up}"
        if runner_score * 4 >= score * 3:
            return f"near tie with {runner_up} (score {runner_score})"
    if score == 1:
        return f"one keyword ({next(iter(hits))!r})"
    return None
