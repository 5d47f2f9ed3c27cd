"""deploy/: the kustomizations render (`kubectl kustomize`), every rendered object validates against the
Kubernetes schemas (kubernetes-validate, strict) or, for KEDA's kinds, against KEDA's schema
(tests/data/keda-v1alpha1.schema.json), and the invariants an operator relies on hold. The Dockerfile is checked
statically (no Docker engine here)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from sqlalchemy import select, text

from orch.agents import load_agents
from orch.settings import Settings
from orch.states import TaskStatus
from orch.store import repo
from orch.store.db import ensure_schema, write_session
from orch.store.models import TaskRow
from tests.helpers import make_plan

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUSTOMIZE_ROOT = DEPLOY / "k8s"
OVERLAY = Path("overlays/example")
KEDA_SCHEMA = REPO / "tests" / "data" / "keda-v1alpha1.schema.json"
KUBERNETES_VERSION = "1.30"

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
    return kustomize(copy / OVERLAY)


@pytest.fixture(params=["base", "overlay"])
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
    given = {
        key.removeprefix("ORCH_").lower(): value
        for key, value in container_env(objs, container).items()
        if key.startswith("ORCH_") and key.removeprefix("ORCH_").lower() in fields
    }
    return Settings(_env_file=None, **given)  # type: ignore[call-arg]


def all_containers(objs: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    for obj in objs:
        if obj["kind"] in (*LONG_RUNNING, "Job"):
            for container in containers(obj):
                yield obj, container


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
            if env["name"] in SECRET_ENV or SECRET_NAME.search(env["name"]):
                assert "secretKeyRef" in env.get("valueFrom", {}), f"{where} must come from a Secret"
            assert not SECRET_VALUE.search(env.get("value", "")), f"{where} holds a credential"
        for source in container.get("envFrom", []):
            assert set(source) <= {"configMapRef", "secretRef", "prefix"}, where


def secret_refs(objs: list[Obj]) -> list[tuple[str, str]]:
    """(secret name, key) of every secretKeyRef and of KEDA's TriggerAuthentications."""
    refs = []
    for _obj, container in all_containers(objs):
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs.append((ref["name"], ref["key"]))
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
        plan_id = repo.submit_plan(session, plan, repo.db_now(session))
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


def policies_for(objs: list[Obj], labels: dict[str, str]) -> list[Obj]:
    return [p for p in of_kind(objs, "NetworkPolicy") if selects(p["spec"]["podSelector"]["matchLabels"], labels)]


def test_only_orch_reaches_redis_postgres_and_flower(rendered: list[Obj]) -> None:
    orch_peer = {"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "orch"}}}
    guarded_names = {"orch-redis", "orch-postgres", "orch-flower"}
    guarded = [
        o for o in rendered if o["kind"] in LONG_RUNNING and pod_labels(o)["app.kubernetes.io/name"] in guarded_names
    ]
    assert any(pod_labels(o)["app.kubernetes.io/name"] == "orch-flower" for o in guarded)
    for obj in guarded:
        (policy,) = policies_for(rendered, pod_labels(obj))
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        for rule in policy["spec"]["ingress"]:
            assert rule["ports"], f"{name(policy)}: a rule open on every port"
            for peer in rule["from"]:
                keda = peer.get("namespaceSelector") == {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}
                assert peer == orch_peer or (keda and name(obj) == "orch-postgres"), f"{name(policy)}: {peer}"
    for obj in rendered:  # every pod that needs them carries the label the policies admit
        if obj["kind"] in (*LONG_RUNNING, "Job"):
            assert pod_labels(obj).get("app.kubernetes.io/part-of") == "orch", name(obj)


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
    assert "/etc/redis/redis.conf" in container["command"][-1]
    assert redis["spec"]["volumeClaimTemplates"], "Redis keeps its append-only file on a volume"


def test_flower_exporter_and_migration_commands(rendered: list[Obj]) -> None:
    by_name = {name(o): o for o in rendered if o["kind"] in (*LONG_RUNNING, "Job")}
    (flower,) = containers(by_name["orch-flower"])
    assert flower["command"] == ["celery", "-A", "orch", "flower", "--port=5555", "--address=0.0.0.0"]
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
