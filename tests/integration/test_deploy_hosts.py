"""deploy/compose/ and deploy/systemd/: orch on a few hosts short of Kubernetes. The compose file validates against
the Compose Specification's schema (tests/data/compose-spec.schema.json), or through `docker compose config` where
the compose plugin is installed; the systemd units pass `systemd-analyze verify`. Both are checked for what an
operator relies on: every agent type's queue is read by exactly one worker group (the same groups as the Kubernetes
manifests), one beat, every command parses as the orch or celery command it runs, every setting they give is one
orch knows, images are pinned, and no password is written in them."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
import yaml
from celery.bin.base import CLIContext
from celery.bin.celery import celery as celery_cli

from orch.celery import make_app
from orch.cli import main as orch_cli
from orch.durations import parse_duration
from orch.intake.agents import load_agents
from orch.settings import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "deploy" / "compose"
SYSTEMD = REPO / "deploy" / "systemd"
K8S_WORKERS = REPO / "deploy" / "k8s" / "base" / "workers.yaml"
COMPOSE_SCHEMA = REPO / "tests" / "data" / "compose-spec.schema.json"
SETTINGS = {f"ORCH_{name.upper()}" for name in Settings.model_fields}


def agent_queues() -> set[str]:
    return {agent.queue for agent in load_agents(REPO / "config")}


def k8s_queue_groups() -> set[frozenset[str]]:
    groups = set()
    for doc in yaml.safe_load_all(K8S_WORKERS.read_text()):
        if doc and doc.get("kind") == "Deployment":
            command = doc["spec"]["template"]["spec"]["containers"][0]["command"]
            groups.add(frozenset(command[command.index("-Q") + 1].split(",")))
    return groups


def env_file(path: Path) -> dict[str, str]:
    entries = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            entries[key.strip()] = value
    return entries


def parse_celery(args: list[str]) -> click.Context:
    """`celery -A orch SUB ARGS` parsed by Celery's own command line, as it would start: an unknown option or a
    bad value raises click.UsageError."""
    assert args[:3] == ["celery", "-A", "orch"], args
    parent = celery_cli.make_context("celery", args[1:4])
    parent.obj = CLIContext(app=make_app(Settings()), no_color=True, workdir=None, quiet=True)
    command = celery_cli.commands[args[3]]
    return command.make_context(args[3], args[4:], parent=parent)


def parse_orch(args: list[str]) -> click.Context:
    """`orch SUB ARGS` parsed by orch's command line, without running it."""
    assert args[0] == "orch", args
    parent = orch_cli.make_context("orch", [args[1]])
    group: click.Group = orch_cli
    command = group.commands[args[1]]
    rest = args[2:]
    while isinstance(command, click.Group):
        parent = command.make_context(args[1], [rest[0]], parent=parent)
        command, rest = command.commands[rest[0]], rest[1:]
    return command.make_context(command.name or "", rest, parent=parent)


def worker_queues(context: click.Context) -> list[str]:
    return list(context.params["queues"] or [])


# ---- docker compose ----


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((COMPOSE / "compose.yaml").read_text())  # `<<` merge keys resolved
    return loaded


def services(compose: dict[str, Any], command_word: str) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if command_word in s.get("command", [])}


def test_compose_file_is_valid_compose(compose: dict[str, Any], tmp_path: Path) -> None:
    docker = shutil.which("docker")
    plugin = docker is not None and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    if plugin:
        copy = tmp_path / "compose"
        shutil.copytree(COMPOSE, copy, ignore=shutil.ignore_patterns("secrets*", "workspace"))
        subprocess.run(["sh", str(copy / "make-secrets.sh")], check=True, capture_output=True)
        done = subprocess.run([str(docker), "compose", "config", "-q"], cwd=copy, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    validator = jsonschema.Draft7Validator(yaml.safe_load(COMPOSE_SCHEMA.read_text()))
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert problems == []


def test_the_schema_check_catches_a_misspelled_key(compose: dict[str, Any]) -> None:
    validator = jsonschema.Draft7Validator(yaml.safe_load(COMPOSE_SCHEMA.read_text()))
    broken = {**compose, "services": {**compose["services"], "beat": {**compose["services"]["beat"], "comand": []}}}
    assert any("comand" in e.message for e in validator.iter_errors(broken))


def test_compose_workers_read_every_queue_once_in_the_kubernetes_groups(compose: dict[str, Any]) -> None:
    workers = services(compose, "worker")
    groups = {name: worker_queues(parse_celery(s["command"])) for name, s in workers.items()}
    read = Counter(queue for queues in groups.values() for queue in queues)
    assert set(read) == agent_queues()
    assert set(read.values()) == {1}
    assert {frozenset(q) for q in groups.values()} == k8s_queue_groups()
    names = [parse_celery(s["command"]).params["hostname"] for s in workers.values()]
    assert len(set(names)) == len(names)  # -n differs per group, so Flower and `orch check` tell them apart


def test_compose_runs_one_beat_and_every_command_parses(compose: dict[str, Any]) -> None:
    beats = services(compose, "beat")
    assert list(beats) == ["beat"]
    assert "deploy" not in beats["beat"] and "scale" not in beats["beat"]
    for name, service in compose["services"].items():
        command = service.get("command")
        if not command or not isinstance(command, list) or command[0] not in ("celery", "orch"):
            continue
        if command[0] == "orch":
            parse_orch(command)
        elif command[3] != "flower":  # Flower's options are Tornado's, passed through; tests/e2e/test_flower.py runs it
            parse_celery(command)
        assert service.get("image") == "orch:local", name
        assert service["build"] == {"context": "../..", "dockerfile": "deploy/Dockerfile"}, name


def test_compose_pins_images_and_holds_no_secret(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service["image"]
        assert image == "orch:local" or re.search(r"@sha256:[0-9a-f]{64}$", image), (name, image)
        for key in service.get("environment", {}):
            assert not re.search("PASSWORD$|URL$|AUTH$|KEY$", key), (name, key)  # files and secrets.env only
    text = (COMPOSE / "compose.yaml").read_text()
    assert not re.search(r"://[^/\s]*:[^@\s]+@", text)  # no URL with a password in it


def test_compose_settings_are_known_and_workers_outlast_the_shutdown_grace(compose: dict[str, Any]) -> None:
    settings = env_file(COMPOSE / "orch.env")
    assert set(settings) <= SETTINGS
    for name, service in compose["services"].items():
        if service["image"] == "orch:local":
            assert set(service.get("environment", {})) <= SETTINGS, name
    for name, service in services(compose, "worker").items():
        assert parse_duration(service["stop_grace_period"]) > float(settings["ORCH_SHUTDOWN_GRACE"]) * 2, name
        assert service["environment"]["ORCH_SANDBOX"] == "bwrap"
        assert "seccomp=../seccomp/orch-worker.json" in service["security_opt"]
        assert (COMPOSE / "../seccomp/orch-worker.json").is_file()


def test_make_secrets_writes_private_files_with_urls_orch_accepts(tmp_path: Path) -> None:
    copy = tmp_path / "compose"
    shutil.copytree(COMPOSE, copy, ignore=shutil.ignore_patterns("secrets*", "workspace"))
    shutil.copy(COMPOSE / "make-secrets.sh", copy)
    first = subprocess.run(["sh", str(copy / "make-secrets.sh")], capture_output=True, text=True, check=True)
    assert "wrote secrets.env" in first.stdout
    written = env_file(copy / "secrets.env")
    assert set(written) == {"ORCH_DATABASE_URL", "ORCH_READONLY_DATABASE_URL", "ORCH_BROKER_URL", "ORCH_FLOWER_AUTH"}
    redis_password = (copy / "secrets" / "redis-password").read_text()
    assert len(redis_password) >= 32 and f":{redis_password}@redis:" in written["ORCH_BROKER_URL"]
    for path in [copy / "secrets.env", *(copy / "secrets").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    settings = Settings(database_url=written["ORCH_DATABASE_URL"], broker_url=written["ORCH_BROKER_URL"])
    assert settings.resolved_database_url.startswith("postgresql")
    again = subprocess.run(["sh", str(copy / "make-secrets.sh")], capture_output=True, text=True, check=True)
    assert "kept" in again.stdout and env_file(copy / "secrets.env") == written


# ---- systemd ----


def worker_groups() -> dict[str, dict[str, str]]:
    return {path.stem.removeprefix("worker-"): env_file(path) for path in SYSTEMD.glob("worker-*.env")}


def unit_entries(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of a unit file, in order (systemd allows a key more than once)."""
    entries, section = [], ""
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def exec_start(path: Path, environment: dict[str, str], instance: str = "") -> list[str]:
    (line,) = [value for section, key, value in unit_entries(path) if key == "ExecStart"]
    line = line.replace("%i", instance).replace("%H", "host")
    line = re.sub(r"\$\{(\w+)\}", lambda m: environment[m.group(1)], line)
    args = shlex.split(line)
    return [Path(args[0]).name, *args[1:]]


def test_systemd_worker_groups_read_every_queue_once_in_the_kubernetes_groups() -> None:
    template = SYSTEMD / "orch-worker@.service"
    read: Counter[str] = Counter()
    groups = set()
    for name, environment in worker_groups().items():
        context = parse_celery(exec_start(template, environment, name))
        assert context.params["hostname"] == f"{name}@host"
        queues = worker_queues(context)
        read.update(queues)
        groups.add(frozenset(queues))
    assert set(read) == agent_queues() and set(read.values()) == {1}
    assert groups == k8s_queue_groups()


def test_systemd_units_commands_parse_and_settings_are_known() -> None:
    for unit in SYSTEMD.glob("orch-*.service"):
        if unit.name == "orch-worker@.service":
            continue
        command = exec_start(unit, {})
        parse_orch(command) if command[0] == "orch" else parse_celery(command)
        assert ("Service", "User", "orch") in unit_entries(unit), unit.name
    assert set(env_file(SYSTEMD / "orch.env")) <= SETTINGS
    assert set(env_file(SYSTEMD / "secrets.env.example")) <= SETTINGS | {"ANTHROPIC_API_KEY"}
    for unit in SYSTEMD.glob("*.service"):
        environment = [value for _, key, value in unit_entries(unit) if key == "Environment"]
        assert all(value.split("=")[0] in SETTINGS for value in environment), unit.name
        assert not re.search(r"://[^/\s]*:[^@\s]+@", unit.read_text()), unit.name


def test_systemd_worker_stops_celery_alone_within_a_bound_above_the_shutdown_grace() -> None:
    entries = {key: value for _, key, value in unit_entries(SYSTEMD / "orch-worker@.service")}
    assert entries["KillMode"] == "mixed"  # SIGTERM to Celery alone: its warm shutdown stops the agents
    assert float(entries["TimeoutStopSec"]) > 2 * float(env_file(SYSTEMD / "orch.env")["ORCH_SHUTDOWN_GRACE"])
    assert entries["Environment"] == "ORCH_SANDBOX=bwrap"


def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("systemd-analyze is not installed, and CI=true requires this check")
        pytest.skip("systemd-analyze is not installed (Debian's systemd package has it)")
    bin_dir = Path(sys.executable).parent  # this checkout's orch and celery
    units = []
    for unit in [*SYSTEMD.glob("*.service"), *SYSTEMD.glob("*.target")]:
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace("/opt/orch/venv/bin/", f"{bin_dir}/"))
        copy.chmod(0o644)
        if not unit.name.endswith("@.service"):
            units.append(unit.name)
    units += [f"orch-worker@{name}.service" for name in worker_groups()]
    done = subprocess.run(
        [analyze, "verify", "--man=no", *(f"./{name}" for name in units)], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr
