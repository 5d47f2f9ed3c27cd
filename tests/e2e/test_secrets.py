"""Canary secrets reach no sink. The worker holds one of each kind: its agent type's own key (granted to the
agents that print it), another type's secret, a variable no agent type names, and orch's own Flower password.
Agents print their key on stdout, on stderr, in a failure, in a `verify:` command's output, in a model's reply
and in a CLI's result, and try the others (which they never get). Then every sink is searched: `orch run`'s
output, `orch status` (table and --json), `orch report` (Markdown and JSON), `orch logs` (and --raw), every file
orch wrote (the store with its events, the attempt and verify logs, the worker's log), Flower's API and metrics,
and the exporter's metrics."""

from __future__ import annotations

import base64
import json
import re
import shutil
import textwrap
import urllib.request
from pathlib import Path

import yaml

from tests.e2e.conftest import ORCH, REPO, Processes, orch_env, run_orch
from tests.e2e.test_flower import start_flower
from tests.fakes.messages_api import MessagesAPI, Reply
from tests.helpers import fake_claude_wrapper, wait_for

OWN_KEY = "sk-ant-CANARY-3f9a1c7e55d2"  # general-purpose's ANTHROPIC_API_KEY
OTHER_TYPES = "ghp-CANARY-other-team-8d41c2"  # a secret only the `other` type lists
UNLISTED = "aws-CANARY-unlisted-5e0b77"  # in the worker's environment, named by no agent type
FLOWER_PASSWORD = "flower-CANARY-pass-91ac3e"
CANARIES = (OWN_KEY, OTHER_TYPES, UNLISTED, FLOWER_PASSWORD)

PRINT_ALL = 'for v in "$ANTHROPIC_API_KEY" "$OTHER_TEAM_TOKEN" "$AWS_SECRET_ACCESS_KEY"; do echo "key=[$v]"; done'


def config_with_another_type(tmp_path: Path) -> Path:
    config = tmp_path / "config"
    shutil.copytree(REPO / "config", config)
    agents = yaml.safe_load((config / "agents.yaml").read_text())
    agents["agent_types"].insert(0, {"name": "other", "description": "another team", "secrets": ["OTHER_TEAM_TOKEN"]})
    (config / "agents.yaml").write_text(yaml.safe_dump(agents, sort_keys=False))
    return config


def plan_file(tmp_path: Path, claude: Path) -> Path:
    plan = tmp_path / "leaky.yaml"
    plan.write_text(
        textwrap.dedent(
            f"""\
            name: leaky
            tasks:
              - id: shout
                title: print the keys everywhere
                agent: general-purpose
                retries: 1
                command: |
                  {PRINT_ALL}
                  echo "stderr key=$ANTHROPIC_API_KEY" >&2
                  cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' | grep -a CANARY || true
                  if [ "$ORCH_ATTEMPT" -lt 2 ]; then echo "failing with $ANTHROPIC_API_KEY"; exit 1; fi
              - id: checked
                title: a verify that prints what it has
                agent: general-purpose
                retries: 0
                command: echo "done with $ANTHROPIC_API_KEY"
                verify: |
                  {PRINT_ALL}
                  echo "verify failing"; exit 1
              - id: echo-model
                title: ask the model
                agent: general-purpose
                executor: anthropic
              - id: cli
                title: a CLI that reports its environment FAKE:env-values
                agent: general-purpose
                executor: claude-code
            """
        )
    )
    return plan


def get(url: str, credentials: str | None = None) -> str:
    request = urllib.request.Request(url)
    if credentials is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.read().decode(errors="replace"))


def get_once(url: str, showing: str, credentials: str | None = None) -> str | None:
    """The page at `url` once it shows `showing`."""
    text = get(url, credentials)
    return text if showing in text else None


def test_canary_secrets_reach_no_sink(tmp_path: Path, redis_url: str, processes: Processes) -> None:
    claude = fake_claude_wrapper(tmp_path / "bin" / "claude")
    plan = plan_file(tmp_path, claude)
    reply = Reply(text=f"Your key is {OWN_KEY}, keep it safe.")
    with MessagesAPI(default=reply) as api:
        env = orch_env(
            tmp_path,
            ORCH_CONFIG_DIR=str(config_with_another_type(tmp_path)),
            ORCH_BROKER_URL=redis_url,
            ORCH_CLAUDE_BIN=str(claude),
            ORCH_RETRY_BACKOFF_BASE="0.2",
            ORCH_FLOWER_AUTH=f"ops:{FLOWER_PASSWORD}",
            ANTHROPIC_API_KEY=OWN_KEY,
            ANTHROPIC_BASE_URL=api.url,
            OTHER_TEAM_TOKEN=OTHER_TYPES,
            AWS_SECRET_ACCESS_KEY=UNLISTED,
        )
        flower, _ = start_flower(processes, [ORCH, "flower"], tmp_path, env, tmp_path / "flower.log")
        run = run_orch(["run", str(plan)], tmp_path, env, timeout=180)
        assert run.returncode == 1, run.stdout + run.stderr  # `checked` fails its verify, on purpose

    outputs = {"orch run stdout": run.stdout, "orch run stderr": run.stderr}
    for args in (
        ["status", "leaky"],
        ["status", "leaky", "--json"],
        ["report", "leaky"],
        ["report", "leaky", "--format", "json"],
        *(
            ["logs", "leaky", task, *raw]
            for task in ("shout", "checked", "echo-model", "cli")
            for raw in ([], ["--raw"])
        ),
    ):
        done = run_orch(args, tmp_path, env)
        outputs[f"orch {' '.join(args)}"] = done.stdout + done.stderr
    statuses = {t["id"]: t for t in json.loads(outputs["orch status leaky --json"])["tasks"]}
    assert statuses["shout"]["status"] == "succeeded" and statuses["echo-model"]["status"] == "succeeded"
    assert statuses["cli"]["status"] == "succeeded" and statuses["checked"]["status"] == "failed"

    credentials = f"ops:{FLOWER_PASSWORD}"
    outputs["Flower /api/tasks"] = wait_for(
        lambda: get_once(f"{flower}/api/tasks", "orch.run_task", credentials), 30, "Flower to list the attempts"
    )
    outputs["Flower /api/workers"] = get(f"{flower}/api/workers", credentials)
    outputs["Flower /metrics"] = get(f"{flower}/metrics")

    log = tmp_path / "exporter.log"
    processes.start([ORCH, "exporter", "--port", "0"], tmp_path, env, log)
    url = wait_for(lambda: re.search(r"serving (http://\S+/metrics)", log.read_text()), 60, "the exporter").group(1)
    outputs["orch exporter /metrics"] = wait_for(
        lambda: get_once(url, "orch_exporter_ready 1.0"), 60, "the exporter's first read"
    )

    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix not in (".yaml",) and "bin" not in p.parts]
    assert any(p.name == "orch.db" for p in files) and any(p.name.endswith(".verify.log") for p in files)
    for path in files:
        outputs[str(path)] = path.read_bytes().decode(errors="replace")
    for where, text in outputs.items():
        for secret in CANARIES:
            assert secret not in text, f"a secret leaked into {where}"

    logs = {p.name: p.read_text(errors="replace") for p in files if p.suffix == ".log"}
    shout = logs["shout.2.log"]
    assert "key=[[redacted ANTHROPIC_API_KEY]]" in shout and "stderr key=[redacted ANTHROPIC_API_KEY]" in shout
    assert shout.count("key=[]") == 2, shout  # another type's secret and an unlisted variable: never given
    verify = logs["checked.1.verify.log"]
    assert verify.count("key=[]") == 3, verify  # verify gets none of the type's secrets
    assert "done with [redacted ANTHROPIC_API_KEY]" in logs["checked.1.log"]
    assert "[redacted ANTHROPIC_API_KEY]" in logs["echo-model.1.log"]
    cli = json.loads(next(line for line in logs["cli.1.log"].splitlines() if '"type": "result"' in line))
    assert "[redacted ANTHROPIC_API_KEY]" in cli["result"] and "OTHER_TEAM_TOKEN" not in cli["result"]
