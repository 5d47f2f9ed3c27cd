"""A repository (or an agent working in it) can plant Python modules in the folder `orch run` or `orch flower` is
started from: `python -m celery` and Celery's app loader both put the current folder first on sys.path. orch starts
its worker and Flower so that nothing there is imported: the planted modules never run."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import ORCH, Processes, orch_env, run_orch
from tests.e2e.test_flower import start_flower

PLANTED = ("celery/__init__.py", "kombu.py", "orch.py", "workers/__init__.py", "yaml.py")


def plant(folder: Path) -> Path:
    markers = folder / "markers"
    markers.mkdir()
    for name in PLANTED:
        module = folder / name
        module.parent.mkdir(exist_ok=True)
        module.write_text(f"open({str(markers / name.replace('/', '-'))!r}, 'w').write('imported')\n")
    return markers


def test_modules_planted_where_orch_run_starts_are_never_imported(tmp_path: Path) -> None:
    markers = plant(tmp_path)
    plan = tmp_path / "plan.yaml"
    plan.write_text("name: planted\ntasks:\n  - {id: a, title: say hi, command: echo hi}\n")
    result = run_orch(["run", str(plan)], tmp_path, orch_env(tmp_path), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in markers.iterdir()) == []


def test_modules_planted_where_flower_starts_are_never_imported(tmp_path: Path, processes: Processes) -> None:
    markers = plant(tmp_path)
    env = orch_env(tmp_path, ORCH_FLOWER_AUTH="ops:a-long-enough-password")
    start_flower(processes, [ORCH, "flower"], tmp_path, env, tmp_path / "flower.log")
    assert sorted(p.name for p in markers.iterdir()) == []
