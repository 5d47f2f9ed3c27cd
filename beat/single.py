"""One beat per store: a second beat refuses to start, with one line naming the holder (exit 2).

Dispatch itself is safe with several dispatchers (on PostgreSQL every dispatch transaction takes an advisory
lock, and each claim is a compare-and-set), but one beat is what a deployment runs, and a second one is a
mistake worth stopping: two reapers, two re-senders, twice the store load.

- SQLite: an exclusive `flock` on `<database>.beat.lock`, holding the holder's pid.
- PostgreSQL: a session-level advisory lock (`pg_try_advisory_lock(BEAT_LOCK_KEY)`) on a connection of its own,
  kept open for the beat's lifetime, whose `application_name` names the beat's host and pid, so that a refusal
  names the holder (pg_locks joined with pg_stat_activity). The session's end releases it: a beat that stops, is
  killed, or whose connection the server drops. The beat checks that connection before every tick
  (`keep`); when it has dropped (a PostgreSQL restart, a network loss) the beat takes the lock again on a new one
  and does not tick until it has it; if another beat took it meanwhile, this one stops rather than run two.

The beat `orch run` starts is limited to its own plans (ORCH_BEAT_PLANS) and takes no lock, so several
`orch run`s, and a deployment's beat, may share a store."""

from __future__ import annotations

import fcntl
import os
import secrets
import socket
from pathlib import Path
from typing import IO, Protocol

from sqlalchemy import Connection, Engine, create_engine, make_url, text
from sqlalchemy.pool import NullPool

from orch.errors import ConfigInvalid
from orch.log import get_logger
from orch.store.db import STORE_UNAVAILABLE

log = get_logger(__name__)

# orch's advisory-lock keys: migrations 0x6F726368 and dispatch 0x6F726369 (orch/store/db.py), the beat this one.
# Below 2**31, so pg_locks shows it as classid 0, objid BEAT_LOCK_KEY, objsubid 1 (a bigint key).
BEAT_LOCK_KEY = 0x6F72636A
# The lock connection's keepalives. The client's let the beat notice a dead connection within about half a minute
# (tcp_user_timeout bounds a check that hangs on a lost network); the server's (session settings) let PostgreSQL
# end a vanished beat's session, and so free its lock, as quickly.
_CLIENT_KEEPALIVES = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}
_SERVER_KEEPALIVES = "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3"

_HOLDER = text(
    """
    SELECT l.pid, a.application_name FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objid::bigint = :key AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    """
)


class BeatLock(Protocol):
    def keep(self) -> bool:
        """Whether this beat holds the lock now, taking it again if its hold was lost; False while the store is
        unreachable. Raises ConfigInvalid if another beat took it."""

    def release(self) -> None: ...


def hold_single_beat_lock(database_url: str) -> BeatLock | None:
    """Take the store's beat lock for this process's lifetime; raise ConfigInvalid naming the holder if another
    beat has it. None for a database orch has no guard for."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return SqliteBeatLock(Path(url.database), database_url)
    if url.get_backend_name() == "postgresql":
        return PostgresBeatLock(database_url)
    return None


class BeatLockHeld(ConfigInvalid):
    """Another beat holds the store's beat lock."""

    def __init__(self, holder: str, shown_url: str) -> None:
        self.holder = holder
        self.shown_url = shown_url
        super().__init__(f"another beat ({holder}) already runs against {shown_url}: one beat per store; stop it first")


class SqliteBeatLock:
    def __init__(self, database: Path, database_url: str) -> None:
        lock_path = database.with_name(database.name + ".beat.lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = lock_path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise BeatLockHeld(f"pid {holder}", database_url) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self.handle: IO[str] = handle

    def keep(self) -> bool:
        return not self.handle.closed

    def release(self) -> None:
        self.handle.close()


class PostgresBeatLock:
    def __init__(self, database_url: str) -> None:
        url = make_url(database_url)
        self.shown_url = url.render_as_string(hide_password=True)
        # Unique to this process: a session under this name that this beat no longer holds is its own, left over.
        # At most 63 characters (PostgreSQL cuts longer names, and `_take`'s comparison would then fail).
        host = socket.gethostname()[:28]
        self.application_name = f"orch-beat on {host}, pid {os.getpid()} ({secrets.token_hex(3)})"
        options = " ".join(str(o) for o in (url.query.get("options"), _SERVER_KEEPALIVES) if o)
        self.engine: Engine = create_engine(
            url,
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
            connect_args={**_CLIENT_KEEPALIVES, "application_name": self.application_name, "options": options},
        )
        self.connection: Connection | None = None
        if not self._take():
            log.warning("store unreachable: the beat takes its lock when it answers", database=self.shown_url)

    def keep(self) -> bool:
        if self.connection is not None:
            try:
                self.connection.exec_driver_sql("SELECT 1")
                return True
            except Exception:  # a dropped connection, whatever the driver calls it: a new one takes the lock again
                log.warning("the beat lock's connection dropped; taking the lock again", database=self.shown_url)
                self._drop()
        try:
            taken = self._take()
        except BeatLockHeld as held:
            raise ConfigInvalid(
                f"another beat ({held.holder}) took the beat lock of {held.shown_url} while this beat's connection "
                f"to it was down; this beat stops (one beat per store)"
            ) from None
        if taken:
            log.info("the beat lock is held again", database=self.shown_url)
        return taken

    def _take(self) -> bool:
        """Take the lock on a new connection: True once held, False if the store is unreachable; raise
        BeatLockHeld naming the holder if another session holds it."""
        try:
            connection = self.engine.connect()
        except STORE_UNAVAILABLE:
            return False
        try:
            holder = self._try_lock(connection)
            if holder is not None and holder[1] == self.application_name:
                # This beat's own former session, still alive on the server after the beat lost sight of it.
                ended = connection.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": holder[0]})
                if not ended.scalar_one():  # still ending: not another beat, so try again next tick
                    connection.close()
                    return False
                holder = self._try_lock(connection)
        except STORE_UNAVAILABLE:
            connection.close()
            return False
        if holder is not None:
            connection.close()
            raise BeatLockHeld(holder[1] or f"PostgreSQL backend {holder[0]}", self.shown_url)
        self.connection = connection
        return True

    @staticmethod
    def _try_lock(connection: Connection) -> tuple[int, str] | None:
        """None if the lock is now this connection's; else the holding backend's pid and application name."""
        for _ in range(3):  # the holder may let go between the two statements
            if connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": BEAT_LOCK_KEY}).scalar_one():
                return None
            row = connection.execute(_HOLDER, {"key": BEAT_LOCK_KEY}).first()
            if row is not None:
                return int(row[0]), str(row[1] or "")
        return 0, "unknown"

    def _drop(self) -> None:
        if self.connection is not None:
            self.connection.invalidate()
            self.connection.close()
            self.connection = None

    def release(self) -> None:
        """End the lock's session, which frees the lock."""
        if self.connection is not None:
            self.connection.close()
            self.connection = None
        self.engine.dispose()
