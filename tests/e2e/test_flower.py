"""Flower as operators start it (`celery -A orch flower`, `orch flower`) against the machine's Redis: basic auth
from ORCH_FLOWER_AUTH by default, a refusal to start without it, and an explicit opt-out that warns."""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tests.e2e.conftest import ORCH, Processes, orch_env, run_orch
from tests.helpers import free_port, wait_for

CELERY_FLOWER = [sys.executable, "-m", "celery", "-A", "orch", "flower"]
OPS_PASSWORD = "flower-ops-pass-7f3a9c"
VIEWER_PASSWORD = "flower-view-pass-2b8e41"
FLOWER_AUTH = f"ops:{OPS_PASSWORD},viewer:{VIEWER_PASSWORD}"


def status_of(url: str, credentials: str | None = None) -> int:
    request = urllib.request.Request(url)
    if credentials is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def answering(url: str) -> bool:
    try:
        return status_of(url) == 200
    except OSError:
        return False


def start_flower(
    processes: Processes, args: list[str], tmp_path: Path, env: dict[str, str], log: Path
) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    process = processes.start([*args, f"--port={port}", "--address=127.0.0.1"], tmp_path, env, log)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: answering(f"{base}/healthcheck") or process.poll() is not None, 60, "Flower to answer")
    assert process.poll() is None, log.read_text()
    return base, process


def listening_addresses(port: int) -> set[str]:
    """The local addresses something listens on at TCP `port` (from /proc/net/tcp and tcp6)."""
    found: set[str] = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        with open(table, encoding="ascii") as rows:
            for row in list(rows)[1:]:
                local, state = row.split()[1], row.split()[3]
                address, _, hex_port = local.partition(":")
                if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                    continue
                raw = bytes.fromhex(address)  # the kernel's words, each in host (little-endian) order
                found.add(socket.inet_ntop(family, b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))))
    return found


def test_flower_listens_on_127_0_0_1_unless_an_address_is_given(
    redis_url: str, tmp_path: Path, processes: Processes
) -> None:
    env = orch_env(tmp_path, ORCH_BROKER_URL=redis_url, ORCH_FLOWER_AUTH=FLOWER_AUTH)
    ways = [  # how Flower is started, with what environment, and the one address it should listen on
        (CELERY_FLOWER, env, "127.0.0.1"),
        ([ORCH, "flower"], env, "127.0.0.1"),
        (CELERY_FLOWER, {**env, "FLOWER_ADDRESS": "127.0.0.2"}, "127.0.0.2"),  # Flower's own variable
        ([ORCH, "flower", "--address", "127.0.0.3"], env, "127.0.0.3"),
    ]
    started = []
    for number, (command, environ, address) in enumerate(ways):
        port = free_port()
        process = processes.start([*command, f"--port={port}"], tmp_path, environ, tmp_path / f"flower-{number}.log")
        started.append((port, address, process))

    for port, address, process in started:
        url = f"http://{address}:{port}/healthcheck"
        wait_for(lambda: answering(url) or process.poll() is not None, 60, f"Flower on {address}:{port}")  # noqa: B023
        assert process.poll() is None, (address, port)
        assert listening_addresses(port) == {address}, (address, port)


def test_the_flower_process_is_hardened(redis_url: str, tmp_path: Path, processes: Processes) -> None:
    env = orch_env(tmp_path, ORCH_BROKER_URL=redis_url, ORCH_FLOWER_AUTH=FLOWER_AUTH)
    port = free_port()
    wrapped = ["sh", "-c", 'umask 022; exec "$@"', "sh", *CELERY_FLOWER, f"--port={port}"]  # a usual umask
    process = processes.start(wrapped, tmp_path, env, tmp_path / "flower.log")
    wait_for(lambda: answering(f"http://127.0.0.1:{port}/healthcheck"), 60, "Flower to answer")
    status = Path(f"/proc/{process.pid}/status").read_text()
    assert "\nUmask:\t0077\n" in status, status

    # Non-dumpable can only be read by the process itself: the same start, in a process that then reports it.
    probe = (
        "from orch.services.flower import start_flower; start_flower(()); "
        "from orch.hardening import is_dumpable; print(is_dumpable())"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_flower_requires_the_basic_auth_of_orch_flower_auth(
    redis_url: str, tmp_path: Path, processes: Processes
) -> None:
    env = orch_env(tmp_path, ORCH_BROKER_URL=redis_url, ORCH_FLOWER_AUTH=FLOWER_AUTH)
    log = tmp_path / "flower.log"
    base, _ = start_flower(processes, CELERY_FLOWER, tmp_path, env, log)

    for path in ("/api/workers", "/"):
        assert status_of(base + path) == 401, path
        assert status_of(base + path, f"ops:{OPS_PASSWORD}") == 200, path
        assert status_of(base + path, f"viewer:{VIEWER_PASSWORD}") == 200, path
        assert status_of(base + path, "ops:wrong-password") == 401, path
        assert status_of(base + path, f"viewer:{OPS_PASSWORD}") == 401, path

    processes.stop_all()
    text = log.read_text()
    assert "Visit me at" in text, text
    assert OPS_PASSWORD not in text and VIEWER_PASSWORD not in text


def test_flower_without_auth_refuses_to_start_with_one_line(redis_url: str, tmp_path: Path) -> None:
    env = orch_env(tmp_path, ORCH_BROKER_URL=redis_url)
    for command in ([*CELERY_FLOWER, f"--port={free_port()}"], [ORCH, "flower", f"--port={free_port()}"]):
        result = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert result.stderr.strip().splitlines() == [
            "orch: Flower requires auth: set ORCH_FLOWER_AUTH=user:password (several separated by commas), or "
            "ORCH_FLOWER_ALLOW_NO_AUTH=true (`orch flower --no-auth`) to run it open"
        ], (command, result.stderr)


def test_a_malformed_orch_flower_auth_is_named_but_not_shown(redis_url: str, tmp_path: Path) -> None:
    env = orch_env(tmp_path, ORCH_BROKER_URL=redis_url, ORCH_FLOWER_AUTH=f"ops:{OPS_PASSWORD},{VIEWER_PASSWORD}")
    result = run_orch(["flower", f"--port={free_port()}"], tmp_path, env, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == "orch: ORCH_FLOWER_AUTH entry 2 of 2 is not user:password (its value is not shown)"
    assert VIEWER_PASSWORD not in result.stdout + result.stderr


def test_a_short_password_is_refused_by_position_without_showing_it(redis_url: str, tmp_path: Path) -> None:
    short = "eleven-char"
    env = orch_env(tmp_path, ORCH_BROKER_URL=redis_url, ORCH_FLOWER_AUTH=f"ops:{OPS_PASSWORD},viewer:{short}")
    for command in ([*CELERY_FLOWER, f"--port={free_port()}"], [ORCH, "flower", f"--port={free_port()}"]):
        result = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert result.stderr.strip().splitlines() == [
            "orch: ORCH_FLOWER_AUTH entry 2 of 2 has a password shorter than 12 characters (its value is not shown)"
        ], (command, result.stderr)
        assert short not in result.stdout + result.stderr


def test_the_opt_out_warns_and_serves_without_auth(redis_url: str, tmp_path: Path, processes: Processes) -> None:
    env = orch_env(tmp_path, ORCH_BROKER_URL=redis_url)
    log = tmp_path / "flower.log"
    base, _ = start_flower(processes, [ORCH, "flower", "--no-auth"], tmp_path, env, log)
    assert status_of(base + "/") == 200
    processes.stop_all()
    warnings = [line for line in log.read_text().splitlines() if "WITHOUT authentication" in line]
    assert len(warnings) == 1, log.read_text()
    assert '"level": "warning"' in warnings[0] and "ORCH_FLOWER_ALLOW_NO_AUTH=true" in warnings[0]
