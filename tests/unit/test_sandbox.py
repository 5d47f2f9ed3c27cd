"""What an agent is granted (its environment is an allow-list) and what bubblewrap is told to show it: pure
functions, no process started."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from orch.errors import ConfigInvalid
from orch.intake.agents import agent_network, parse_agents
from orch.services.isolation import AgentUser, absolute_path, drop_privileges_to
from workers.sandbox.bwrap import Layout, bwrap_arguments
from workers.sandbox.grant import Grant, agent_environment
from workers.sandbox.workdir import UnsafeWorkdir, WorkerSecrets, check_workdir, open_workdir

IDS = {"ORCH_PLAN_ID": "plan-123", "ORCH_TASK_ID": "build", "ORCH_ATTEMPT": "2", "ORCH_AGENT": "devops-engineer"}
WORKER_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/worker",
    "LANG": "C.UTF-8",
    "TMPDIR": "/var/tmp/worker",
    "ORCH_DATABASE_URL": "postgresql://orch:s3cret@db/orch",
    "ORCH_BROKER_URL": "redis://:s3cret@broker:6379/0",
    "ORCH_FLOWER_AUTH": "admin:s3cret-flower",
    "ORCH_PLAN_ID": "stale",
    "ANTHROPIC_API_KEY": "sk-ant-granted-key",
    "GITHUB_TOKEN": "ghp-only-for-others",
    "AWS_SECRET_ACCESS_KEY": "aws-not-named-anywhere",
    "PGPASSWORD": "pg-not-named-anywhere",
    "LD_PRELOAD": "/tmp/evil.so",
    "NPM_CONFIG_REGISTRY": "https://registry.example",
}


def test_the_environment_is_an_allow_list() -> None:
    grant = Grant(
        attempt_ids=IDS,
        secrets={"ANTHROPIC_API_KEY": "sk-ant-granted-key"},
        home=Path("/tmp/orch-attempt-x/home"),
        tmp=Path("/tmp/orch-attempt-x/tmp"),
    )
    env = agent_environment(WORKER_ENV, grant)
    assert env == {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": "/tmp/orch-attempt-x/home",
        "TMPDIR": "/tmp/orch-attempt-x/tmp",
        "ANTHROPIC_API_KEY": "sk-ant-granted-key",
        **IDS,
    }
    assert not any("s3cret" in value or "aws-" in value or "pg-" in value for value in env.values())


def test_an_agent_types_env_names_the_workers_variables_it_passes() -> None:
    env = agent_environment(WORKER_ENV, Grant(attempt_ids=IDS, passthrough=("NPM_CONFIG_REGISTRY", "UNSET_ONE")))
    assert env["NPM_CONFIG_REGISTRY"] == "https://registry.example"
    assert "UNSET_ONE" not in env and "GITHUB_TOKEN" not in env


def test_the_attempt_ids_win_over_anything_else() -> None:
    env = agent_environment(WORKER_ENV, Grant(attempt_ids=IDS, extra={"ORCH_TASK_ID": "forged", "FOO": "bar"}))
    assert env["ORCH_TASK_ID"] == "build" and env["ORCH_PLAN_ID"] == "plan-123" and env["FOO"] == "bar"


def test_without_a_path_the_agent_gets_a_safe_one() -> None:
    assert agent_environment({}, Grant(attempt_ids={}))["PATH"] == "/usr/local/bin:/usr/bin:/bin"


def test_relative_and_empty_path_entries_never_reach_an_agent() -> None:
    # An empty entry, or ./bin, means the current folder: the agent's workdir, where it can plant any program.
    env = agent_environment({"PATH": "./node_modules/.bin::/usr/bin:bin:/bin:"}, Grant(attempt_ids={}))
    assert env["PATH"] == "/usr/bin:/bin"
    assert absolute_path("relative:also") == "/usr/local/bin:/usr/bin:/bin"


def test_env_may_not_pass_what_orch_sets_or_what_undoes_the_sandbox() -> None:
    base = {"agent_types": [{"name": "general-purpose"}]}
    for name in ("ORCH_DATABASE_URL", "LD_PRELOAD", "HOME", "PATH"):
        with pytest.raises(ConfigInvalid, match=name):
            parse_agents({**base, "defaults": {"env": [name]}})
    registry = parse_agents({**base, "defaults": {"env": ["NPM_CONFIG_REGISTRY"], "network": "none"}})
    assert registry.get("general-purpose").env == ("NPM_CONFIG_REGISTRY",)


def test_network_auto_is_host_for_api_agents_and_none_for_the_rest() -> None:
    assert agent_network("auto", "claude-code") == "host"
    assert agent_network("auto", "anthropic") == "host"
    assert agent_network("auto", "shell") == "none"
    assert agent_network("auto", "python") == "none"
    assert agent_network("host", "shell") == "host"
    assert agent_network("none", "claude-code") == "none"


def mounts(args: list[str]) -> list[tuple[str, ...]]:
    """bwrap's mount options in order, as (option, *paths)."""
    arity = {"--ro-bind": 2, "--bind": 2, "--tmpfs": 1, "--dir": 1, "--dev": 1, "--proc": 1}
    found: list[tuple[str, ...]] = []
    i = 0
    while i < len(args):
        option = args[i]
        if option in arity:
            found.append((option, *args[i + 1 : i + 1 + arity[option]]))
            i += 1 + arity[option]
        else:
            i += 1
    return found


def index_of(found: list[tuple[str, ...]], option: str, path: str) -> int:
    return next(i for i, mount in enumerate(found) if mount[0] == option and mount[-1] == path)


def test_orch_home_inside_the_workdir_is_hidden_after_the_workdir_is_bound() -> None:
    layout = Layout(
        workdir=Path("/srv/plan"),
        writable=(Path("/srv/plan"), Path("/tmp/orch-attempt-1")),
        hidden=(Path("/srv/plan/.orch"), Path("/etc/orch-config")),
    )
    args = bwrap_arguments(layout)
    found = mounts(args)
    assert index_of(found, "--bind", "/srv/plan") < index_of(found, "--tmpfs", "/srv/plan/.orch")
    assert ("--tmpfs", "/etc/orch-config") in found
    assert ("--bind", "/tmp/orch-attempt-1", "/tmp/orch-attempt-1") in found
    assert found[0] == ("--ro-bind", "/", "/")
    assert args[args.index("--chdir") + 1] == "/srv/plan"
    for flag in ("--unshare-pid", "--die-with-parent", "--new-session", "--unshare-ipc"):
        assert flag in args
    assert "--unshare-net" not in args


def test_programs_inside_a_hidden_home_are_shown_again_read_only_with_walkable_parents() -> None:
    layout = Layout(
        workdir=Path("/root/code/app"),
        writable=(Path("/root/code/app"),),
        readable=(Path("/root/.pyenv/versions/3.11.7"), Path("/usr/lib/python3")),
        hidden=(Path("/root"),),
    )
    found = mounts(bwrap_arguments(layout))
    hide = index_of(found, "--tmpfs", "/root")
    assert hide < index_of(found, "--ro-bind", "/root/.pyenv/versions/3.11.7")
    assert hide < index_of(found, "--bind", "/root/code/app")
    assert ("--dir", "/root/.pyenv") in found and ("--dir", "/root/code") in found
    assert not any(mount[-1] == "/usr/lib/python3" for mount in found)  # visible already: not bound again


def test_orchs_own_programs_inside_the_workdir_are_bound_again_read_only() -> None:
    layout = Layout(
        workdir=Path("/srv/orch"),
        writable=(Path("/srv/orch"),),
        readable=(Path("/srv/orch/.venv"), Path("/srv/orch/orch")),
    )
    found = mounts(bwrap_arguments(layout))
    workdir = index_of(found, "--bind", "/srv/orch")
    assert workdir < index_of(found, "--ro-bind", "/srv/orch/.venv")
    assert workdir < index_of(found, "--ro-bind", "/srv/orch/orch")


def test_the_workdir_is_bound_by_the_descriptor_it_was_checked_through() -> None:
    layout = Layout(workdir=Path("/srv/plan"), writable=(Path("/srv/plan"),), workdir_fd=7)
    args = bwrap_arguments(layout)
    assert args[args.index("--bind-fd") : args.index("--bind-fd") + 3] == ["--bind-fd", "7", "/srv/plan"]
    assert "--bind" not in args


def test_what_lies_in_a_hidden_folder_or_the_private_tmp_needs_no_hiding() -> None:
    layout = Layout(
        workdir=Path("/srv/plan"),
        writable=(Path("/srv/plan"),),
        hidden=(Path("/tmp/pytest/.orch"), Path("/home/w")),
        hidden_files=(Path("/home/w/orch.env"), Path("/srv/orch.db")),
    )
    found = mounts(bwrap_arguments(layout))
    assert not any(mount[-1] == "/tmp/pytest/.orch" for mount in found)
    assert not any(mount[-1] == "/home/w/orch.env" for mount in found)
    assert ("--ro-bind", "/dev/null", "/srv/orch.db") in found


def test_network_none_unshares_the_network_and_root_drops_to_the_agent_user() -> None:
    layout = Layout(workdir=Path("/w"), writable=(Path("/w"),), network=False)
    assert "--unshare-net" in bwrap_arguments(layout)
    assert "--unshare-user" in bwrap_arguments(layout, privileged=False)
    assert "--unshare-user" not in bwrap_arguments(layout, privileged=True)
    drop = drop_privileges_to(AgentUser("orch-agent", 999, 995), "/usr/bin/setpriv")
    assert drop[:3] == (["/usr/bin/setpriv", "--reuid=999", "--regid=995"] if os.geteuid() == 0 else [])


def worker_secrets(tmp_path: Path, store: Path | None = None, user_home: Path | None = None) -> WorkerSecrets:
    return WorkerSecrets(
        home=tmp_path / ".orch", config_dir=tmp_path / "config", store_file=store, env_file=None, user_home=user_home
    )


def test_a_workdir_inside_orch_home_or_holding_the_store_is_refused(tmp_path: Path) -> None:
    check_workdir(tmp_path, worker_secrets(tmp_path, tmp_path / ".orch" / "orch.db"))  # ORCH_HOME beside a plan
    with pytest.raises(UnsafeWorkdir, match="inside ORCH_HOME"):
        check_workdir(tmp_path / ".orch" / "logs", worker_secrets(tmp_path))
    with pytest.raises(UnsafeWorkdir, match="lies inside workdir"):
        check_workdir(tmp_path, worker_secrets(tmp_path, tmp_path / "store.db"))
    with pytest.raises(UnsafeWorkdir, match="outside this worker's ORCH_WORKDIR_ROOTS"):
        check_workdir(tmp_path / "w", worker_secrets(tmp_path), roots=[Path("/workspace")])
    check_workdir(tmp_path / "w", worker_secrets(tmp_path), roots=[tmp_path])


def test_a_workdir_that_is_or_holds_what_the_sandbox_replaces_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home" / "worker"
    kept = worker_secrets(tmp_path / "x", user_home=home)
    for workdir in (Path("/"), Path("/tmp"), Path("/run"), home, tmp_path / "home"):
        with pytest.raises(UnsafeWorkdir, match="is or holds"):
            check_workdir(workdir, kept)
    check_workdir(home / "project", kept)  # a project in the worker's home is fine


def test_what_orch_hides_may_lie_in_a_workdir_only_where_no_agent_can_move_it(tmp_path: Path) -> None:
    nested = WorkerSecrets(
        home=tmp_path / "sub" / ".orch", config_dir=tmp_path / "cfg", store_file=None, env_file=None, user_home=None
    )
    with pytest.raises(UnsafeWorkdir, match="in a folder of workdir"):  # `sub` could be renamed, .orch with it
        check_workdir(tmp_path, nested, sandboxed=True)
    beside = worker_secrets(tmp_path)  # .orch right in the workdir: a mountpoint, which cannot be renamed
    check_workdir(tmp_path, beside, sandboxed=True)
    with pytest.raises(UnsafeWorkdir, match="without a sandbox as another user"):
        check_workdir(tmp_path, beside, sandboxed=False, other_user=True)
    check_workdir(tmp_path, beside, sandboxed=False, other_user=False)  # one user: nothing to keep it from


def test_a_workdir_whose_path_became_a_link_is_not_opened(tmp_path: Path) -> None:
    (tmp_path / "real" / "work").mkdir(parents=True)
    fd = open_workdir(tmp_path / "real" / "work")
    os.close(fd)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafeWorkdir, match="changed while it was checked"):
        os.close(open_workdir(tmp_path / "linked"))


def test_the_cost_a_cli_reports_counts_only_when_it_is_a_real_one() -> None:
    from workers.executors.claude_code import reported_cost

    assert reported_cost(0.25) == 0.25 and reported_cost(0) == 0.0
    for forged in (-5.0, float("nan"), float("inf"), "0.1", True, None, [1]):
        assert reported_cost(forged) is None


def test_what_an_agent_names_is_masked_too() -> None:
    """`touch "$KEY"` makes a file named after a secret; a forged result line can name a model after one."""
    from orch.records import AttemptResult
    from orch.redaction import Redactor
    from workers.runner import redact

    key = "sk-ant-granted-key-123456"
    result = AttemptResult(True, files_changed=(f"{key}.txt", "a.py"), model=key, output_tail=key, result=key)
    masked = redact(result, Redactor({"ANTHROPIC_API_KEY": key}))
    assert masked.files_changed == ("[redacted ANTHROPIC_API_KEY].txt", "a.py")
    assert key not in repr(masked)


def test_without_bubblewrap_auto_warns_and_bwrap_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where bubblewrap is not installed (it is on this machine: the lookup stands in for a host without it)."""
    from orch.services import isolation
    from orch.settings import Settings

    monkeypatch.setattr(isolation, "program", lambda name: None if name == "bwrap" else f"/usr/bin/{name}")
    required = isolation.resolve_isolation(Settings(sandbox="bwrap"))
    assert required.sandbox == "none" and required.problem is not None
    assert required.problem.startswith("ORCH_SANDBOX=bwrap, but bubblewrap (bwrap) is not installed")
    if os.geteuid() != 0 or pwd.getpwnam("orch-agent"):
        automatic = isolation.resolve_isolation(Settings(sandbox="auto"))
        assert automatic.problem is None and automatic.sandbox == "none"
        assert automatic.warning is not None and "found no usable sandbox" in automatic.warning
