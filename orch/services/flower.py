"""Flower behind basic auth by default.

`celery -A orch flower` imports orch's Celery app while Celery's command line is choosing the sub-command; when
that sub-command is Flower, `guard_flower_command` wraps it so that, before Flower reads its options, the
credentials in ORCH_FLOWER_AUTH become Flower's `basic_auth` option (never an argument or an environment
variable another process could read). Without them Flower does not start, unless Flower's own auth options are
given or ORCH_FLOWER_ALLOW_NO_AUTH=true opts out, with a warning. `celery worker`/`beat` are left alone.

Flower holds those credentials (and the broker URL), so its process is hardened like every orch process, and it
listens on 127.0.0.1 unless an address is given (Flower's own default is every interface): basic auth travels in
clear over HTTP, so reaching Flower from elsewhere should go through a TLS proxy or `kubectl port-forward`."""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import click

from orch.errors import ConfigInvalid
from orch.settings import Settings

FLOWER_COMMAND = "flower"
MISSING_AUTH = (
    "Flower requires auth: set ORCH_FLOWER_AUTH=user:password (several separated by commas), or "
    "ORCH_FLOWER_ALLOW_NO_AUTH=true (`orch flower --no-auth`) to run it open"
)
NO_AUTH_WARNING = (
    "Flower runs WITHOUT authentication (ORCH_FLOWER_ALLOW_NO_AUTH=true): whoever reaches its port sees every "
    "task and can act on the workers; set ORCH_FLOWER_AUTH=user:password to require basic auth"
)
# Flower's own ways of requiring auth (its --basic-auth / --auth options and their FLOWER_* variables).
_FLOWER_AUTH_OPTIONS = ("--basic-auth", "--basic_auth", "--auth")
_FLOWER_AUTH_VARIABLES = ("FLOWER_BASIC_AUTH", "FLOWER_AUTH")
MIN_PASSWORD_CHARS = 12
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class FlowerAuth:
    """What Flower must require: `basic_auth` entries (user:password), or none, with a warning to print."""

    basic_auth: tuple[str, ...] = ()
    warning: str | None = None


def basic_auth_entries(value: str) -> tuple[str, ...]:
    """ORCH_FLOWER_AUTH's `user:password` entries; a malformed one, or one whose password is shorter than
    MIN_PASSWORD_CHARS, is named by position, never shown."""
    entries = tuple(entry for entry in value.split(",") if entry.strip())
    if not entries:
        raise ConfigInvalid("ORCH_FLOWER_AUTH is empty; give user:password (several separated by commas)")
    for number, entry in enumerate(entries, 1):
        user, colon, password = entry.partition(":")
        which = f"ORCH_FLOWER_AUTH entry {number} of {len(entries)}"
        if not (colon and user.strip() and password):
            raise ConfigInvalid(f"{which} is not user:password (its value is not shown)")
        if len(password) < MIN_PASSWORD_CHARS:
            raise ConfigInvalid(
                f"{which} has a password shorter than {MIN_PASSWORD_CHARS} characters (its value is not shown)"
            )
    return entries


def flowers_own_auth(flower_args: Sequence[str], environ: Mapping[str, str]) -> bool:
    """Whether Flower was given auth of its own (its options on the command line or FLOWER_* variables)."""
    if any(environ.get(name) for name in _FLOWER_AUTH_VARIABLES):
        return True
    return any(arg.partition("=")[0] in _FLOWER_AUTH_OPTIONS for arg in flower_args)


def resolve_flower_auth(settings: Settings, flower_args: Sequence[str], environ: Mapping[str, str]) -> FlowerAuth:
    if settings.flower_auth is not None:
        return FlowerAuth(basic_auth_entries(settings.flower_auth.get_secret_value()))
    if flowers_own_auth(flower_args, environ):
        return FlowerAuth()
    if settings.flower_allow_no_auth:
        return FlowerAuth(warning=NO_AUTH_WARNING)
    raise ConfigInvalid(MISSING_AUTH)


def apply_flower_options(auth: FlowerAuth) -> None:
    """Hand the credentials and the loopback address to Flower through its (tornado) options, before Flower parses
    its own: FLOWER_ADDRESS, its config file and --address, read after, still choose another address."""
    from tornado.options import options

    importlib.import_module("flower.options")  # defines Flower's options, basic_auth and address among them

    options.address = LOOPBACK
    if auth.basic_auth:
        options.basic_auth = list(auth.basic_auth)


def start_flower(flower_args: Sequence[str]) -> None:
    """Hardening, logging, auth and address for a Flower about to start; one clear line and exit 2 when auth is
    missing or weak."""
    from orch.hardening import harden_process
    from orch.log import configure_logging, get_logger
    from orch.settings import get_settings

    harden_process()  # non-dumpable: its memory and /proc/<pid>/environ hold the credentials and the broker URL
    configure_logging()  # Flower's --logging option (default info) sets the level of Flower's own lines
    try:
        auth = resolve_flower_auth(get_settings(), flower_args, os.environ)
    except ConfigInvalid as exc:
        print(f"orch: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    if auth.warning:
        get_logger(__name__).warning(auth.warning)
    apply_flower_options(auth)


def guard_flower_command() -> None:
    """When this process is `celery … flower`, run `start_flower` before Flower's own command."""
    ctx = click.get_current_context(silent=True)
    if ctx is None or ctx.invoked_subcommand != FLOWER_COMMAND or not isinstance(ctx.command, click.Group):
        return
    command = ctx.command.get_command(ctx, FLOWER_COMMAND)
    if command is None or command.callback is None or getattr(command.callback, "orch_guarded", False):
        return
    original: Callable[..., Any] = command.callback

    @functools.wraps(original)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        start_flower(tuple(kwargs.get("tornado_argv") or ()))
        return original(*args, **kwargs)

    guarded.orch_guarded = True  # type: ignore[attr-defined]
    command.callback = guarded


def exec_flower(port: int | None, address: str | None, no_auth: bool, settings: Settings) -> None:
    """`orch flower`: check auth here (a clear error, exit 2), then become `celery -A orch flower`."""
    env = dict(os.environ)
    if no_auth:
        env["ORCH_FLOWER_ALLOW_NO_AUTH"] = "true"
    else:
        resolve_flower_auth(settings, (), env)
    # -P and `/` as the current folder: `python -m` and Celery's app loader both put the current folder first on
    # sys.path, and whatever folder Flower is started in must not supply its modules.
    args = [sys.executable, "-P", "-m", "celery", "-A", "orch", FLOWER_COMMAND]
    if port is not None:
        args.append(f"--port={port}")
    if address is not None:
        args.append(f"--address={address}")
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir("/")
    os.execve(sys.executable, args, env)
