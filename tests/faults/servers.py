"""Private servers for the fault scenarios that stop and restart the broker or the store: a `redis-server` and a
PostgreSQL cluster (`initdb` into a temporary folder), each on a free port of its own, so the machine's own
services are never touched. Each server runs as a child process in its own session that dies with the test
process (PR_SET_PDEATHSIG), can be stopped and started again on the same port (and, for PostgreSQL, the same
data directory), and is removed, folder and all, by `close()`.

Also here: what the scenarios that take one of them away while a plan runs share (`wait_mid_run`, `outage`, and
reading what happened around it)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.faults.harness import AttemptState, Cluster, LeaseWatch, Store, end_session, spawn, wait_until

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
PG_BIN = Path(shutil.which("postgres") or "/usr/local/bin/postgres").parent
PG_USER = "postgres"  # the OS account PostgreSQL runs as: it refuses to run as root


def free_port() -> int:
    """A TCP port nobody listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateServer:
    """A server process on `port`, restartable, logged to `log_path`."""

    name = "server"

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.stopped_at: float | None = None  # time.monotonic() of the last stop
        self.started_at: float | None = None  # time.monotonic() of the last start (when it answered)

    @property
    def log_path(self) -> Path:
        return self.folder / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    # The signal the server gets if the test process dies (PR_SET_PDEATHSIG).
    death_signal: int = signal.SIGKILL

    def account(self) -> tuple[int, int] | None:
        """(uid, gid) to run the server as; None: as the test process."""
        return None

    def environment(self) -> dict[str, str] | None:
        return None

    def answers(self) -> bool:
        raise NotImplementedError

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until it answers; fail with its log if it does not."""
        assert not self.running(), f"{self.name} is already running"
        self.process = spawn(
            self.command(), self.log_path, self.folder, self.environment(), self.death_signal, self.account()
        )
        self.starts += 1

        def up() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            return self.answers()

        try:
            wait_until(up, timeout, f"{self.name} on port {self.port} to answer", interval=0.05)
        except AssertionError:
            self.stop()
            raise
        self.started_at = time.monotonic()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        """Send `sig` and wait for the server to exit (SIGKILL after `timeout`)."""
        if self.process is not None:
            end_session(self.process, sig, timeout)
        self.stopped_at = time.monotonic()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def __enter__(self) -> PrivateServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class PrivateRedis(PrivateServer):
    """`redis-server` on 127.0.0.1:`port` without persistence: a restart loses every message it held."""

    name = "redis"

    def __init__(self, folder: Path | None = None, port: int | None = None) -> None:
        super().__init__(folder or Path(tempfile.mkdtemp(prefix="orchfault-redis-")), port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.folder),
            "--daemonize", "no",
            "--logfile", str(self.log_path),
        ]  # fmt: skip

    def answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop_nosave(self, timeout: float = 20.0) -> None:
        """`SHUTDOWN NOSAVE`: the server exits at once, dropping every key (no persistence is configured). Sent
        on a raw socket: a client library would retry the command on the connection the server closes."""
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"SHUTDOWN NOSAVE\r\n")
            while sock.recv(4096):  # until the server closes the connection
                pass
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        self.stop(signal.SIGTERM, timeout)


class PrivatePostgres(PrivateServer):
    """A PostgreSQL cluster `initdb`ed into a temporary folder (trust auth), its server on 127.0.0.1:`port` and a
    unix socket in the folder, run as the `postgres` account. Stopping it with SIGINT is `pg_ctl stop -m fast`
    (sessions are ended, the server shuts down cleanly); `start()` again reuses the same data directory."""

    name = "postgres"
    database = "orch"

    def __init__(self, folder: Path | None = None, port: int | None = None) -> None:
        super().__init__(folder or Path(tempfile.mkdtemp(prefix="orchfault-pg-")), port)
        account = pwd.getpwnam(PG_USER)
        self.uid, self.gid = account.pw_uid, account.pw_gid
        os.chown(self.folder, self.uid, self.gid)
        (self.folder / "socket").mkdir(exist_ok=True)
        os.chown(self.folder / "socket", self.uid, self.gid)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/postgres"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/{self.database}"

    # SIGQUIT: an immediate shutdown if the test process dies (the cluster is thrown away anyway).
    death_signal = signal.SIGQUIT

    def account(self) -> tuple[int, int]:
        return self.uid, self.gid

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update({"HOME": str(self.folder), "LC_ALL": "C", "LANG": "C"})
        return env

    def initdb(self) -> None:
        result = subprocess.run(
            [str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", PG_USER, "-E", "UTF8", "--no-sync"],
            cwd=self.folder,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            user=self.uid,
            group=self.gid,
            extra_groups=[],
            env=self.environment(),
        )
        assert result.returncode == 0, f"initdb failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"

    def command(self) -> list[str]:
        return [
            str(PG_BIN / "postgres"),
            "-D", str(self.data),
            "-p", str(self.port),
            "-k", str(self.folder / "socket"),
            "-c", "listen_addresses=127.0.0.1",
            "-c", "max_connections=200",
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
            "-c", "logging_collector=off",
        ]  # fmt: skip

    def answers(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(
                host="127.0.0.1", port=self.port, user=PG_USER, dbname="postgres", connect_timeout=2
            ) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def create_database(self) -> str:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=PG_USER, dbname="postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{self.database}"')
        return self.url

    def setup(self) -> str:
        """initdb, start, create the store's database; its URL."""
        self.initdb()
        self.start()
        return self.create_database()

    def stop_fast(self, timeout: float = 20.0) -> None:
        """What `pg_ctl stop -m fast` does: SIGINT to the postmaster, then wait for it to exit."""
        self.stop(signal.SIGINT, timeout)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20.0) -> None:
        super().stop(sig, timeout)


# --- a plan through a server's outage ---------------------------------------------------------------------


def wait_mid_run(
    cluster: Cluster, store: Store, plan_id: str, watch: LeaseWatch, succeeded: int, running: int, what: str
) -> None:
    """Wait (up to a minute, sampling leases) until at least `succeeded` tasks are done and `running` run."""

    def mid_run() -> bool:
        cluster.check_alive()
        watch.sample()
        now = store.status_counts(plan_id)
        return now.get("succeeded", 0) >= succeeded and now.get("running", 0) >= running

    wait_until(mid_run, 60, what, interval=0.1)


@dataclass(frozen=True)
class Outage:
    """When a server was away: wall-clock times (time.time()) and how long it was down."""

    stopping: float  # just before it was told to stop
    down: float  # once it had exited
    up: float  # once it answered again
    seconds: float  # from its exit to its answering again (time.monotonic())


def outage(
    server: PrivateServer, stop: Callable[[], None], seconds: float, cluster: Cluster, watch: LeaseWatch | None = None
) -> Outage:
    """Stop `server` with `stop`, keep it down for `seconds` while checking that the cluster survives (and sampling
    `watch`, if given: not when the server is the store), then start it again as it was."""
    stopping = time.time()
    stop()
    down = time.time()
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:  # the deliberate outage; the cluster must survive it
            cluster.check_alive()
            if watch is not None:
                watch.sample()
            time.sleep(0.2)
    finally:
        server.start()
    up = time.time()
    assert server.stopped_at is not None and server.started_at is not None
    return Outage(stopping, down, up, server.started_at - server.stopped_at)


def first_claim_after(attempts: Iterable[AttemptState], wall: float) -> datetime | None:
    """When the first attempt was claimed after `wall` (a time.time())."""
    return min((a.started_at for a in attempts if a.started_at and a.started_at.timestamp() > wall), default=None)


def failed_ticks(beat_log: Iterable[Mapping[str, Any]]) -> int:
    """The ticks that failed, in the beat's JSON log (`Cluster.json_log`)."""
    return sum(1 for e in beat_log if e.get("event") == "tick failed; retrying next tick")
