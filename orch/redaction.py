"""Secret values never reach logs, the store, events or orch's output: every sink passes text through a
Redactor built from the secrets' values (the agent types' `secrets:` variables, as set on this host)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from functools import lru_cache

# Shorter values are not treated as secrets: masking every "1" or "abc" in output would garble it.
MIN_SECRET_LENGTH = 8


class Redactor:
    def __init__(self, secrets: Mapping[str, str]) -> None:
        pairs = {value: f"[redacted {name}]" for name, value in secrets.items() if len(value) >= MIN_SECRET_LENGTH}
        self._pairs = sorted(pairs.items(), key=lambda pair: -len(pair[0]))
        self._byte_pairs = [(value.encode(), mask.encode()) for value, mask in self._pairs]
        self.longest = max((len(value.encode()) for value, _ in self._pairs), default=0)

    def __bool__(self) -> bool:
        return bool(self._pairs)

    def text(self, text: str) -> str:
        for value, mask in self._pairs:
            if value in text:
                text = text.replace(value, mask)
        return text

    def data(self, data: bytes) -> bytes:
        for value, mask in self._byte_pairs:
            if value in data:
                data = data.replace(value, mask)
        return data


def secret_values(names: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    environ = os.environ if environ is None else environ
    return {name: environ[name] for name in names if environ.get(name)}


@lru_cache(maxsize=1)
def process_redactor() -> Redactor:
    """This process's redactor: every secret any agent type names, as set in its environment."""
    from orch.agents import load_agents
    from orch.settings import get_settings

    try:
        registry = load_agents(get_settings().config_dir)
    except Exception:  # logging must work even before the configuration does
        return Redactor({})
    return Redactor(secret_values({name for agent in registry for name in agent.secrets}))
