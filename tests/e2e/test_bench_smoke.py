"""The benchmark (`make bench`) runs end to end at its tiny size. No timing is asserted: every row must be there,
with a sane number, for every store the run covered."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import ROWS, TARGETS
from tests.conftest import POSTGRES_HOST, POSTGRES_PORT, REDIS_HOST, REDIS_PORT, reachable, require_service

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_the_benchmark_runs_at_a_tiny_size(tmp_path: Path) -> None:
    stores = ["sqlite"]
    ci = os.environ.get("CI", "").lower() == "true"
    if ci or (reachable(REDIS_HOST, REDIS_PORT) and reachable(POSTGRES_HOST, POSTGRES_PORT)):
        require_service("Redis", REDIS_HOST, REDIS_PORT)
        require_service("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
        stores.append("postgres")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    out = tmp_path / "results"
    args = ["--size", "tiny", "--store", "both" if len(stores) == 2 else "sqlite", "--out", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"

    (json_path,) = out.glob("*-tiny.json")
    assert (out / json_path.name.replace(".json", ".md")).read_text().startswith("| measure |")
    report = json.loads(json_path.read_text())
    assert report["size"] == "tiny"
    assert sorted(report["stores"]) == sorted(stores)
    for store in stores:
        assert report["stores"][store]["errors"] == [], report["stores"][store]
    assert report["machine"]["nproc"] >= 1
    assert report["versions"]["celery"] and report["versions"]["sqlalchemy"]
    assert report["settings"]["celery"]["worker_prefetch_multiplier"] == 1

    assert [row["id"] for row in report["rows"]] == [row.id for row in ROWS]
    for row in report["rows"]:
        for store in stores:
            value = row["values"][store]
            assert value is not None and math.isfinite(value), (row["id"], store, value)
            if row["sign"] == "positive":
                assert value > 0, (row["id"], store, value)
    for store in stores:  # the worktree part: its tasks went through both kinds of merge, all through git
        worktree = report["stores"][store]["worktree"]
        assert worktree["files"] == report["settings"]["sizes"]["worktree_files"]
        assert worktree["steps"]["merge fast-forward"]["ms"]["n"] == worktree["steps"]["merge 3-way"]["ms"]["n"] >= 1
        assert worktree["by_subcommand"][0]["ms_per_task"] > 0
    assert len(report["targets"]) == len(TARGETS) * len(stores)
    assert all(target["pass"] in (True, False) for target in report["targets"])
