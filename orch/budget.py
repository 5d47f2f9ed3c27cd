"""Budgets: a plan's (or a task's) cap on dollars and tokens, and the pure check of a spend against it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    usd: float | None = None
    tokens: int | None = None

    def __bool__(self) -> bool:
        return self.usd is not None or self.tokens is not None


@dataclass(frozen=True)
class Spend:
    usd: float = 0.0
    tokens: int = 0

    def __add__(self, other: Spend) -> Spend:
        return Spend(self.usd + other.usd, self.tokens + other.tokens)


def describe(spend: Spend, budget: Budget) -> str:
    parts = []
    if budget.usd is not None:
        parts.append(f"${spend.usd:,.4f} of ${budget.usd:,.2f}")
    if budget.tokens is not None:
        parts.append(f"{spend.tokens:,} of {budget.tokens:,} tokens")
    return ", ".join(parts)


def exhausted(spend: Spend, budget: Budget) -> bool:
    """No room left: the spend (finished attempts plus what running ones reported) has reached a cap."""
    return (budget.usd is not None and spend.usd >= budget.usd) or (
        budget.tokens is not None and spend.tokens >= budget.tokens
    )
