"""Real file systems for the store's failure tests: a small tmpfs to fill up or remount read-only, and another user
(`runuser -u nobody`). They need root; elsewhere the test is skipped with the reason, and with CI=true (the CI
machine is root) that is a failure."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def require_root(what: str) -> None:
    if os.geteuid() == 0:
        return
    message = f"{what} needs root"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}, and CI=true requires this test to run")
    pytest.skip(f"{message} (run the suite as root; with CI=true this is a failure)")


@contextlib.contextmanager
def small_tmpfs(mount_point: Path, size: str = "16m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `mount_point` for the block's duration (unmounted after, lazily if a process
    still holds it)."""
    require_root("mounting a tmpfs")
    mount_point.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=True)


def remount(mount_point: Path, mode: str) -> None:
    """`mode`: "ro" or "rw"."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount_point)], check=True)


def fill(folder: Path) -> Path:
    """Write a file in `folder` until its file system has not one byte left; returns it (delete it to free the
    space)."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (1 << 20, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)
    probe = folder / "probe"
    try:
        probe.write_bytes(b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    else:
        raise AssertionError(f"{folder} still had room after filling it")
    finally:
        probe.unlink(missing_ok=True)
    return filler


@contextlib.contextmanager
def shared_scratch(name: str) -> Iterator[Path]:
    """A folder another user may enter (a pytest tmp_path is under a 0700 folder of root's): /tmp/orch-perm-*,
    removed afterwards. It is open to all (sticky, as /tmp is): as root, orch's agents run as orch-agent, which must
    be able to write a plan's workdir there."""
    require_root("testing what another user can read")
    if shutil.which("runuser") is None:
        pytest.fail("runuser (util-linux) is missing")
    folder = Path(tempfile.mkdtemp(prefix=f"orch-perm-{name}-"))
    folder.chmod(0o1777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", "nobody", "--", *args], capture_output=True, text=True, timeout=30)
