"""`orch exporter`, `flower`, `check` and `db upgrade`: the side services and the store's schema."""

from __future__ import annotations

import sys

import click

from orch.cli.common import handle_errors
from orch.redaction import safe_url
from orch.settings import get_settings


@click.group()
def db() -> None:
    """The store's schema."""


@db.command("upgrade")
@handle_errors
def db_upgrade() -> None:
    """Apply the store's Alembic migrations (workers, beat and the CLI also do this at start)."""
    # lazy (start-up cost): the store loads SQLAlchemy
    from orch.store.db import current_revision, ensure_schema

    engine = ensure_schema()
    click.echo(f"{safe_url(engine.url.render_as_string(hide_password=False))}: at revision {current_revision(engine)}")


@click.command()
@click.option("--host", default=None, help="Address to listen on (default ORCH_EXPORTER_HOST: 127.0.0.1).")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=None, help="Port (default ORCH_EXPORTER_PORT: 9808; 0: any free)."
)
@handle_errors
def exporter(host: str | None, port: int | None) -> None:
    """Serve Prometheus metrics at /metrics, computed from the store (and the broker's queues) at each scrape."""
    # lazy (start-up cost): the exporter loads the store (SQLAlchemy) and prometheus_client
    from orch.services.exporter.server import serve
    from orch.store.db import check_sqlite_place

    settings = get_settings()
    check_sqlite_place(settings.resolved_database_url, create=False)  # a server's store may come back; a file not
    listen_port = settings.exporter_port if port is None else port
    serve(
        host or settings.exporter_host,
        listen_port,
        settings,
        lambda url: click.echo(f"orch exporter: serving {url}", err=True),
    )


@click.command("flower")
@click.option("--port", type=int, default=None, help="Port to serve on (Flower's default: 5555).")
@click.option(
    "--address", default=None, help="Address to bind (default: FLOWER_ADDRESS, else 127.0.0.1; 0.0.0.0: every one)."
)
@click.option("--no-auth", is_flag=True, help="Allow starting without ORCH_FLOWER_AUTH (prints a warning).")
@handle_errors
def flower_command(port: int | None, address: str | None, no_auth: bool) -> None:
    """Run Flower (`celery -A orch flower`) behind basic auth from ORCH_FLOWER_AUTH (user:password[,…], passwords of
    12 characters or more), listening on 127.0.0.1 unless --address (or FLOWER_ADDRESS) says otherwise."""
    # lazy (start-up cost): a few ms that only orch flower needs
    from orch.services.flower import exec_flower

    exec_flower(port, address, no_auth, get_settings())


@click.command("check")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=3.0, show_default=True, help="Seconds per server.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def check_command(timeout: float, as_json: bool) -> None:
    """Check the store (reachable, migrations current), the broker, and a worker for every queue with queued
    tasks; one line per check, exit 0 if all are ok, 1 otherwise."""
    # lazy (start-up cost): the checks load the store, and with it SQLAlchemy
    from orch.services.check import render, run_checks

    checks = run_checks(get_settings(), timeout)
    if as_json:
        # lazy (start-up cost): a few ms that only --json needs
        from orch.views.terminal import inert_json

        verdicts = [
            {"check": c.name, "status": "fail" if not c.ok else "warn" if c.warning else "ok", "detail": c.detail}
            for c in checks
        ]
        click.echo(inert_json({"ok": all(c.ok for c in checks), "checks": verdicts}))
    else:
        for line in render(checks):
            click.echo(line)
    sys.exit(0 if all(check.ok for check in checks) else 1)
