"""Agent types, loaded from config/agents.yaml: keywords, queue, executor, concurrency cap, timeout, retries."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from orch.durations import parse_duration
from orch.errors import ConfigInvalid
from orch.executors import KNOWN, NETWORKED, ExecutorName

NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
_WORD = re.compile(r"[a-z0-9]+")

Seconds = Annotated[float, BeforeValidator(parse_duration), Field(gt=0, le=86400)]


def normalise_phrase(text: str) -> str:
    """Lower-case words joined by one space: the form keywords and task text are compared in."""
    return " ".join(_WORD.findall(text.lower()))


class BreakerSpec(BaseModel):
    """Circuit breaker: after `failures` consecutive failed attempts of a type, its dispatch pauses `cooldown`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    failures: int = Field(5, ge=1, le=10_000)
    cooldown: Seconds = 300.0


PermissionMode = Literal["default", "acceptEdits", "bypassPermissions", "plan", "dontAsk", "auto"]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
# An agent's network: host (the worker's), none (no network at all, not even loopback services), or auto: host for
# the executors that call a model's API (claude-code, anthropic), none for the rest (shell, python).
Network = Literal["auto", "host", "none"]
# Variables an agent type's `env:` may not pass: orch's own settings, and what would undo the sandbox.
RESERVED_ENV = re.compile(r"^(ORCH_.*|LD_.*|HOME|TMPDIR|PATH)$")


def _grantable(names: tuple[str, ...]) -> tuple[str, ...]:
    reserved = [name for name in names if RESERVED_ENV.match(name)]
    if reserved:
        raise ValueError(f"{', '.join(reserved)} cannot be passed to agents (orch sets or withholds them itself)")
    return names


EnvNames = Annotated[tuple[EnvName, ...], AfterValidator(_grantable)]


class _AgentDefaults(BaseModel):
    """The one definition of an agent type's defaults (as config/agents.yaml's `defaults:` may change them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    executor: str = ExecutorName.CLAUDE_CODE
    concurrency: int = Field(4, ge=1, le=10_000)
    timeout: Seconds = 1800.0
    idle_timeout: Seconds = 300.0
    retries: int = Field(2, ge=0, le=100)
    model: str = "claude-sonnet-4-6"
    max_tokens: int = Field(8000, ge=1, le=1_000_000)
    secrets: EnvNames = ()
    env: EnvNames = ()
    network: Network = "auto"
    max_turns: int = Field(30, ge=1, le=10_000)
    permission_mode: PermissionMode = "acceptEdits"
    allowed_tools: tuple[str, ...] = ()
    disallowed_tools: tuple[str, ...] = ()
    breaker: BreakerSpec = Field(default_factory=BreakerSpec)


class AgentTypeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    keywords: tuple[str, ...] = ()
    queue: str | None = None
    executor: str | None = None
    concurrency: int | None = Field(None, ge=1, le=10_000)
    timeout: Seconds | None = None
    idle_timeout: Seconds | None = None
    retries: int | None = Field(None, ge=0, le=100)
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    system: str | None = None  # extra system-prompt text for this type
    secrets: EnvNames | None = None
    env: EnvNames | None = None  # more of the worker's variables its agents get (not secrets: never masked)
    network: Network | None = None
    max_turns: int | None = Field(None, ge=1, le=10_000)
    permission_mode: PermissionMode | None = None
    allowed_tools: tuple[str, ...] | None = None
    disallowed_tools: tuple[str, ...] | None = None
    breaker: BreakerSpec | None = None


@dataclass(frozen=True)
class AgentType:
    name: str
    description: str
    keywords: tuple[str, ...]
    queue: str
    executor: ExecutorName
    concurrency: int
    timeout: float
    retries: int
    idle_timeout: float
    model: str
    max_tokens: int
    system: str
    secrets: tuple[str, ...]  # environment variables the worker passes to this type's agents, masked in output
    env: tuple[str, ...]  # other variables of the worker's its agents get, unmasked
    network: str
    max_turns: int
    permission_mode: str
    allowed_tools: tuple[str, ...]
    disallowed_tools: tuple[str, ...]
    breaker: BreakerSpec


class _AgentsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fallback: str = "general-purpose"
    defaults: _AgentDefaults = _AgentDefaults()
    agent_types: list[AgentTypeSpec]


def agent_network(network: str, executor: str) -> str:
    """The network an agent gets: "host" or "none" (`auto` by what the executor calls)."""
    if network == "auto":
        return "host" if executor in NETWORKED else "none"
    return network


@dataclass(frozen=True)
class AgentRegistry:
    """The agent types in file order (the order breaks routing ties), the fallback type, and the file's defaults
    (what a type no longer declared is run with)."""

    types: tuple[AgentType, ...]
    fallback: str
    defaults: _AgentDefaults

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {t.name: t for t in self.types})

    @property
    def by_name(self) -> Mapping[str, AgentType]:
        by_name: Mapping[str, AgentType] = object.__getattribute__(self, "_by_name")
        return by_name

    def __iter__(self) -> Iterator[AgentType]:
        return iter(self.types)

    def __contains__(self, name: object) -> bool:
        return name in self.by_name

    def get(self, name: str) -> AgentType:
        return self.by_name[name]

    def get_or_default(self, name: str) -> AgentType:
        """The type `name`; for one no longer declared (config/agents.yaml changed since its tasks were submitted),
        a type of that name with the file's defaults, as if declared with its name alone."""
        known = self.by_name.get(name)
        return known if known is not None else _agent_type(AgentTypeSpec.model_construct(name=name), self.defaults)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.types]

    @property
    def queues(self) -> list[str]:
        return [t.queue for t in self.types]


def _agent_type(spec: AgentTypeSpec, defaults: _AgentDefaults) -> AgentType:
    """A type as its spec declares it, the rest from the file's defaults."""
    return AgentType(
        name=spec.name,
        description=spec.description,
        keywords=tuple(k for k in (normalise_phrase(k) for k in spec.keywords) if k),
        queue=spec.queue or f"agent.{spec.name}",
        executor=ExecutorName(spec.executor or defaults.executor),
        concurrency=spec.concurrency or defaults.concurrency,
        timeout=spec.timeout or defaults.timeout,
        retries=defaults.retries if spec.retries is None else spec.retries,
        idle_timeout=spec.idle_timeout or defaults.idle_timeout,
        model=spec.model or defaults.model,
        max_tokens=spec.max_tokens or defaults.max_tokens,
        system=spec.system or "",
        secrets=defaults.secrets if spec.secrets is None else spec.secrets,
        env=defaults.env if spec.env is None else spec.env,
        network=spec.network or defaults.network,
        max_turns=spec.max_turns or defaults.max_turns,
        permission_mode=spec.permission_mode or defaults.permission_mode,
        allowed_tools=defaults.allowed_tools if spec.allowed_tools is None else spec.allowed_tools,
        disallowed_tools=defaults.disallowed_tools if spec.disallowed_tools is None else spec.disallowed_tools,
        breaker=spec.breaker or defaults.breaker,
    )


def parse_agents(data: Any, source: str = "agents.yaml") -> AgentRegistry:
    try:
        parsed = _AgentsFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigInvalid(f"{source}: {where}: {first['msg']}") from None
    defaults = parsed.defaults
    types: list[AgentType] = []
    seen: set[str] = set()
    for spec in parsed.agent_types:
        if spec.name in seen:
            raise ConfigInvalid(f"{source}: agent type {spec.name!r} is declared twice")
        seen.add(spec.name)
        executor = spec.executor or defaults.executor
        if executor not in KNOWN:
            raise ConfigInvalid(
                f"{source}: agent type {spec.name!r}: unknown executor {executor!r} (known: {', '.join(ExecutorName)})"
            )
        types.append(_agent_type(spec, defaults))
    if defaults.executor not in KNOWN:  # every type names its own; a type no longer declared would run with it
        raise ConfigInvalid(
            f"{source}: defaults: unknown executor {defaults.executor!r} (known: {', '.join(ExecutorName)})"
        )
    if parsed.fallback not in seen:
        raise ConfigInvalid(f"{source}: fallback agent type {parsed.fallback!r} is not declared")
    return AgentRegistry(types=tuple(types), fallback=parsed.fallback, defaults=defaults)


def load_agents_file(path: Path) -> AgentRegistry:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigInvalid(f"{path}: cannot read agent types: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigInvalid(f"{path}: not valid YAML: {exc}") from None
    return parse_agents(data, str(path))


@lru_cache(maxsize=4)
def load_agents(config_dir: Path) -> AgentRegistry:
    return load_agents_file(config_dir / "agents.yaml")
