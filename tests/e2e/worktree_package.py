"""The e2e worktree scenario's material: a bare repository seeded with a small Python package, a user's checkout of
it, and the plans that build the package (shell tasks writing files, fan-out and fan-in) or make two tasks clash."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path
from typing import Any

MODULES = 12  # pkg/mod_1.py … pkg/mod_12.py, one task each
# Run on every merged result: the package compiles and its tests pass, with the system's python3 (the agents'
# sandbox hides the test run's own Python, and the system's has no pytest: unittest it is).
GATES = ["python3 -m compileall -q pkg", "python3 -m unittest discover -s tests -q"]
SETTINGS = 'NAME = "pkg"\nCOLOR = "{}"\nSIZE = 3\n'  # pkg/settings.py; the clashing tasks each set COLOR

SEED: dict[str, str] = {
    "README.md": "# pkg\n\nA package built by orch's agents.\n",
    "pkg/__init__.py": '"""pkg, filled in by the plan."""\n',
    "pkg/settings.py": SETTINGS.format("plain"),
    "tests/test_seed.py": (
        "import unittest\n\nfrom pkg import settings\n\n\n"
        "class Seed(unittest.TestCase):\n    def test_size(self) -> None:\n        self.assertEqual(settings.SIZE, 3)\n"
    ),
}


def git(repo: Path, *args: str) -> str:
    """git in `repo`, with none of this machine's or user's configuration but an identity."""
    who = {"GIT_AUTHOR_NAME": "u", "GIT_AUTHOR_EMAIL": "u@x", "GIT_COMMITTER_NAME": "u", "GIT_COMMITTER_EMAIL": "u@x"}
    env = {"PATH": os.environ["PATH"], "HOME": str(repo.parent), "GIT_CONFIG_NOSYSTEM": "1", **who}
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env)
    assert done.returncode == 0, f"git {' '.join(args)} in {repo}: {done.stderr}"
    return done.stdout.strip()


def write_tree(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def seeded_origin(tmp_path: Path) -> Path:
    """A bare repository (the plans' remote), its main branch seeded with the package's skeleton."""
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    seed = tmp_path / "seed"
    git(tmp_path, "clone", "-q", str(origin), str(seed))
    git(seed, "checkout", "-q", "-b", "main")
    write_tree(seed, SEED)
    git(seed, "add", ".")
    git(seed, "commit", "-q", "-m", "skeleton")
    git(seed, "push", "-q", "origin", "main")
    return origin


def user_checkout(tmp_path: Path, origin: Path) -> Path:
    """A user's clone of the remote, on a branch of their own, with an uncommitted edit and a staged new file."""
    checkout = tmp_path / "user"
    git(tmp_path, "clone", "-q", str(origin), str(checkout))
    git(checkout, "checkout", "-q", "-b", "my-feature")
    (checkout / "README.md").write_text("# pkg, being edited by its user\n")
    (checkout / "notes.txt").write_text("staged, not committed\n")
    git(checkout, "add", "notes.txt")
    return checkout


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder`, .git included (index, HEAD, refs, objects), by content hash."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def write_files(files: dict[str, str]) -> str:
    """A shell command that writes `files` (path: text) in the current folder."""
    parts = []
    for name, text in files.items():
        folder = os.path.dirname(name)
        parts.append((f"mkdir -p {folder}\n" if folder else "") + f"cat > {name} <<'EOF'\n{text}EOF\n")
    return "".join(parts)


def module_files(n: int) -> dict[str, str]:
    return {
        f"pkg/mod_{n}.py": f"from pkg.core import double\n\n\ndef value() -> int:\n    return double({n})\n",
        f"tests/test_mod_{n}.py": (
            f"import unittest\n\nfrom pkg import mod_{n}\n\n\nclass Mod{n}(unittest.TestCase):\n"
            f"    def test_value(self) -> None:\n        self.assertEqual(mod_{n}.value(), {2 * n})\n"
        ),
    }


def init_files() -> dict[str, str]:
    names = [f"mod_{n}" for n in range(1, MODULES + 1)]
    return {
        "pkg/__init__.py": (
            f'"""pkg: {MODULES} modules."""\n\nfrom pkg import extra, {", ".join(names)}\n\n'
            f"MODULES = [{', '.join(names)}]\n\n\ndef total() -> int:\n"
            "    return sum(module.value() for module in MODULES) + extra.BONUS\n"
        ),
        "tests/test_total.py": (
            "import unittest\n\nimport pkg\n\n\nclass Total(unittest.TestCase):\n"
            f"    def test_total(self) -> None:\n        self.assertEqual(pkg.total(), {expected_total()})\n"
        ),
    }


def expected_total() -> int:
    return sum(2 * n for n in range(1, MODULES + 1)) + 1


def fake_edit(color: str) -> str:
    """A prompted (fake claude) task's description: write pkg/settings.py with COLOR = color."""
    text = SETTINGS.format(color).replace("\n", "\\n")
    return f"Set the colour.\nFAKE:write\nFAKE-WRITE:pkg/settings.py={text}\n"


def package_plan(origin: Path) -> dict[str, Any]:
    """The package, built by 22 tasks: a scaffold; 12 modules, a flaky extra (fails once after leaving a stray
    file) and a checked answer (its first test is wrong: the gates refuse it) in parallel after it; two prompted
    tasks setting the same line of pkg/settings.py from the start (a conflict, resolved by a task); fan-in tasks
    writing pkg/__init__.py, two API pages, a changelog and a release check that imports the whole package."""
    modules = [f"mod_{n}" for n in range(1, MODULES + 1)]
    half = MODULES // 2
    flaky = 'if [ "$ORCH_ATTEMPT" = 1 ]; then touch stray.txt; exit 1; fi\ntest ! -e stray.txt\n'
    release = (
        f'python3 -B -c "import pkg; assert pkg.total() == {expected_total()}, pkg.total()"\n'
        "grep -qx 'COLOR = \"left\"' pkg/settings.py && grep -qx 'COLOR = \"right\"' pkg/settings.py\n"
        "ls pkg/mod_*.py | wc -l > RELEASE\n"
    )
    # Its first attempt's test expects the wrong answer: the gates turn that merge down, the retry's passes.
    checked = (
        "mkdir -p pkg tests\necho 'ANSWER = 42' > pkg/checked.py\n"
        'if [ "$ORCH_ATTEMPT" = 1 ]; then want=41; else want=42; fi\n'
        "cat > tests/test_checked.py <<EOF\nimport unittest\n\nfrom pkg import checked\n\n\n"
        "class Checked(unittest.TestCase):\n    def test_answer(self) -> None:\n"
        "        self.assertEqual(checked.ANSWER, $want)\nEOF\n"
    )
    changelog = "cat docs/api_a.md docs/api_b.md > CHANGELOG.md\necho '- colours: left and right' >> CHANGELOG.md\n"
    tasks: list[dict[str, Any]] = [
        {"id": "scaffold", "title": "scaffold the core",
         "command": write_files({"pkg/core.py": "def double(x: int) -> int:\n    return 2 * x\n"})},
        {"id": "left", "title": "colour it left", "executor": "claude-code", "description": fake_edit("left")},
        {"id": "right", "title": "colour it right", "executor": "claude-code", "description": fake_edit("right")},
        *({"id": name, "title": f"write {name}", "after": ["scaffold"], "command": write_files(module_files(n))}
          for n, name in enumerate(modules, 1)),
        {"id": "flaky", "title": "write the extra", "after": ["scaffold"],
         "command": flaky + write_files({"pkg/extra.py": "BONUS = 1\n"})},
        {"id": "checked", "title": "write the checked answer", "after": ["scaffold"], "command": checked},
        {"id": "init", "title": "import every module", "after": [*modules, "flaky", "checked"],
         "command": write_files(init_files())},
        {"id": "api_a", "title": "document the first modules", "after": modules[:half],
         "command": write_files({"docs/api_a.md": "".join(f"- `pkg.{m}.value()`\n" for m in modules[:half])})},
        {"id": "api_b", "title": "document the last modules", "after": modules[half:],
         "command": write_files({"docs/api_b.md": "".join(f"- `pkg.{m}.value()`\n" for m in modules[half:])})},
        {"id": "changelog", "title": "write the changelog", "after": ["init", "api_a", "api_b", "left", "right"],
         "command": changelog},
        {"id": "release", "title": "check the release", "after": ["changelog"], "command": release},
    ]  # fmt: skip
    return {
        "name": "pkgbuild",
        "repo": {"url": str(origin), "base": "main", "gates": GATES},
        "defaults": {"agent": "general-purpose", "retries": 1},
        "tasks": tasks,
    }


def clash_plan(origin: Path) -> dict[str, Any]:
    """Two shell tasks setting the same line from the same base, `on_conflict: fail`: the second to merge fails."""
    command = "sleep 2\n" + "printf '{}' > pkg/settings.py\n"
    tasks = [
        {
            "id": side,
            "title": f"colour it {side}",
            "command": command.format(SETTINGS.format(side).replace("\n", r"\n")),
        }
        for side in ("blue", "green")
    ]
    return {
        "name": "clash",
        "repo": {"url": str(origin), "base": "main", "on_conflict": "fail"},
        "defaults": {"agent": "devops-engineer", "retries": 0},
        "tasks": tasks,
    }


TRAILER = re.compile(r"^Orch-Task: (.+)$", re.MULTILINE)


def commits_by_task(origin: Path, branch: str) -> dict[str, list[str]]:
    """Each task key named by an `Orch-Task` trailer on `branch`'s history, with the commits naming it."""
    found: dict[str, list[str]] = {}
    for record in git(origin, "log", "--format=%H%x1f%B%x1e", branch).split("\x1e"):
        if not record.strip():
            continue
        commit, _, message = record.strip().partition("\x1f")
        for key in TRAILER.findall(message):
            found.setdefault(key, []).append(commit)
    return found


def is_ancestor(repo: Path, older: str, newer: str) -> bool:
    done = subprocess.run(["git", "-C", str(repo), "merge-base", "--is-ancestor", older, newer], capture_output=True)
    return done.returncode == 0
