"""Token usage and its cost in USD, from config/prices.yaml (per million tokens)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orch.errors import ConfigInvalid

_DATE_SUFFIX = re.compile(r"-\d{8}$")


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_read_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_creation_tokens + self.cache_read_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_creation_tokens + other.cache_creation_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
        )


class Price(BaseModel):
    """USD per million tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_write: float = Field(ge=0)
    cache_read: float = Field(ge=0)


class _PricesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: dict[str, Price]


def cost_usd(usage: Usage, price: Price) -> float:
    return (
        usage.input_tokens * price.input
        + usage.output_tokens * price.output
        + usage.cache_creation_tokens * price.cache_write
        + usage.cache_read_tokens * price.cache_read
    ) / 1_000_000


def price_for(model: str, prices: dict[str, Price]) -> Price | None:
    """The price of `model`, or of its undated name (claude-x-20250929 → claude-x); None if unlisted."""
    if model in prices:
        return prices[model]
    undated = _DATE_SUFFIX.sub("", model)
    return prices.get(undated)


@lru_cache(maxsize=4)
def load_prices(config_dir: Path) -> dict[str, Price]:
    path = config_dir / "prices.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return dict(_PricesFile.model_validate(data).models)
    except OSError as exc:
        raise ConfigInvalid(f"{path}: cannot read prices: {exc.strerror}") from None
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigInvalid(f"{path}: invalid prices: {exc}") from None
