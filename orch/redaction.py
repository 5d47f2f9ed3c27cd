"""Secret values never reach logs, the store, events or orch's output: every sink passes text through a
Redactor built from the secrets' values (the agent types' `secrets:` variables, as set on this host)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

    from orch.settings import Settings

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


def _parsed(url: str) -> URL | None:
    """A database or broker URL as SQLAlchemy parses it (RFC 1738, so redis://:pw@host and amqp://u:pw@host//
    too); None when it cannot (e.g. a broker failover list)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except (ArgumentError, ValueError, TypeError):
        return None


def safe_url(url: str) -> str:
    """A database or broker URL fit to print or log: its password masked (`redis://:***@host:6379/0`). Never
    raises: a URL that does not parse is masked by shape."""
    parsed = _parsed(url)
    shown = (
        URL_CREDENTIALS.sub(_MASKED_PASSWORD, url) if parsed is None else parsed.render_as_string(hide_password=True)
    )
    return redact_log_text(shown)  # a password in the query string too (`?password=…`)


def url_password(url: str | None) -> str | None:
    """The password in a URL like scheme://user:password@host/..., if it has one."""
    if not url:
        return None
    parsed = _parsed(url)
    if parsed is None:
        match = URL_CREDENTIALS.search(url)
        return match.group("password") if match else None
    return None if parsed.password is None else str(parsed.password)


def settings_secrets(settings: Settings) -> dict[str, str]:
    """orch's own secrets: the passwords in its database and broker URLs, Flower's credentials."""
    found: dict[str, str] = {}
    for name, url in (("ORCH_DATABASE_URL", settings.database_url), ("ORCH_BROKER_URL", settings.broker_url)):
        password = url_password(url)
        if password:
            found[name] = password
    if settings.flower_auth is not None:
        for number, entry in enumerate(settings.flower_auth.get_secret_value().split(","), 1):
            found[f"ORCH_FLOWER_AUTH #{number}"] = entry
            found[f"ORCH_FLOWER_AUTH password #{number}"] = entry.partition(":")[2]
    return found


@lru_cache(maxsize=1)
def process_redactor() -> Redactor:
    """This process's redactor: every secret any agent type names, as set in its environment, and orch's own
    (database and broker passwords, Flower's credentials)."""
    from orch.intake.agents import load_agents
    from orch.settings import get_settings

    try:
        settings = get_settings()
        own = settings_secrets(settings)
    except Exception:  # logging must work even before the configuration does
        return Redactor({})
    try:
        registry = load_agents(settings.config_dir)
    except Exception:
        return Redactor(own)
    return Redactor({**secret_values({name for agent in registry for name in agent.secrets}), **own})


# Log lines are also masked by shape, for secrets no setting names (a library's error quoting a URL, a key).
URL_CREDENTIALS = re.compile(r"(?P<prefix>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<password>(?!\*+@)[^@\s/]+)@")
_MASKED_PASSWORD = r"\g<prefix>***@"
_API_KEY = re.compile(r"\bsk-(?:ant-)?[A-Za-z0-9_-]{16,}")
_AUTH_HEADER = re.compile(r"(?i)\b(authorization[\"']?\s*[:=]\s*[\"']?(?:bearer|basic|token)\s+)[^\s\"',;]+")
_KEY_VALUE = re.compile(
    r"(?i)\b((?:password|passwd|pwd|secret|api[_-]?key|x-api-key|access[_-]?token|auth[_-]?token)[\"']?\s*[:=]\s*[\"']?)"
    r"[^\s\"',;&]+"
)
_SENSITIVE_KEY = re.compile(r"(?i)(password|passwd|secret|api[_-]?key|(^|_)token$|authorization|credentials)")


def redact_log_text(text: str) -> str:
    """Mask what looks like a credential: URL passwords, API keys, auth headers, password=… pairs."""
    if "://" in text:
        text = URL_CREDENTIALS.sub(_MASKED_PASSWORD, text)
    if "sk-" in text:
        text = _API_KEY.sub("[redacted api key]", text)
    text = _AUTH_HEADER.sub(r"\1[redacted]", text)
    return _KEY_VALUE.sub(r"\1[redacted]", text)


def error_line(exc: BaseException) -> str:
    """An error as one line fit to log or print: its type and the first line of its message (a database
    driver's own error, when SQLAlchemy wraps one), credentials masked by shape."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return redact_log_text(f"{type(exc).__name__}: {lines[0] if lines else ''}".strip())


def is_sensitive_key(key: str) -> bool:
    """A log field whose value is a credential by its name (password=, api_key=, token=…)."""
    return bool(_SENSITIVE_KEY.search(key))
