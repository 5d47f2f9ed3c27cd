"""Which repository URLs orch fetches from and pushes to, and the `-c` overrides that allow exactly one URL's
transport. SAFE_CONFIG forbids every transport (`protocol.allow=never`); each remote command re-allows the one its
URL needs, so a URL can never reach a transport helper (`ext::sh -c ...`, `fd::3`) or an option-looking argument.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import SplitResult, unquote, urlsplit

from orch.redaction import safe_url
from orch.services.git.command import GitFailed

SSH_COMMAND: Final = "ssh -o BatchMode=yes"  # never a password prompt: a worker has no terminal to answer it
_SCHEME: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_TRANSPORTS: Final = {
    "file": "file",
    "http": "http",
    "https": "https",
    "ssh": "ssh",
    "git+ssh": "ssh",
    "ssh+git": "ssh",
}
# git reads `[user@]host:path` as ssh when a ':' comes before any '/'; the host may not look like an option.
_SCP_LIKE: Final = re.compile(r"^(?:[A-Za-z0-9._~%+-]+@)?(?:[A-Za-z0-9_][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+\]):[^\0]*$")
_PASSWORD_ENV: Final = "ORCH_GIT_URL_PASSWORD"
# The password of an https URL reaches git through this helper's environment, never through argv (which any
# user of the host can read in /proc).
_USER_ENV: Final = "ORCH_GIT_URL_USER"
_HOST_ENV: Final = "ORCH_GIT_URL_HOST"
# The helper answers only for the URL's own host (git names it `host=<host>[:<port>]` on the helper's stdin): not for
# another a redirect led to. Username and password reach it through the environment, never argv.
_ANSWER_FOR_HOST: Final = (
    '!f() { test "$1" = get || exit 0; ok=; while IFS= read -r line && [ -n "$line" ]; do '
    f'[ "$line" = "host=${_HOST_ENV}" ] && ok=1; done; [ -n "$ok" ] || exit 0; '
)
_CREDENTIAL_HELPER: Final = _ANSWER_FOR_HOST + f'printf "password=%s\\n" "${_PASSWORD_ENV}"; }}; f'
# A credential from ORCH_GIT_CREDENTIALS: its user and password.
_STORED_HELPER: Final = (
    _ANSWER_FOR_HOST + f'printf "username=%s\\npassword=%s\\n" "${_USER_ENV}" "${_PASSWORD_ENV}"; }}; f'
)
MAX_CREDENTIALS_BYTES: Final = 1 << 20


def display_url(url: str) -> str:
    """The URL fit to print: any password masked (`https://user:***@host/repo.git`)."""
    return safe_url(url)


def _refused(url: str, why: str) -> GitFailed:
    return GitFailed(f"unsupported repository URL {display_url(url)!r}: {why}")


def _transport(url: str) -> str:
    """The one transport `url` uses (file, http, https, ssh); GitFailed for a URL orch refuses."""
    if not url or any(ord(char) < 0x20 or char == "\x7f" for char in url):
        raise _refused(url, "empty, or holds a control character")
    if url.startswith("-"):
        raise _refused(url, "it starts with '-' and would be read as an option")
    scheme = _SCHEME.match(url)
    if scheme is not None:
        return _scheme_transport(url, scheme.group(1).lower())
    head = url.split("/", 1)[0]
    if "::" in head:
        raise _refused(url, "transport helpers (<helper>::<address>) are not allowed")
    if url.startswith("/"):
        return "file"
    if ":" in head:
        if not _SCP_LIKE.match(url):
            raise _refused(url, "not a [user@]host:path ssh address")
        return "ssh"
    raise _refused(url, "a relative path; give an absolute path or a URL")


def _scheme_transport(url: str, scheme: str) -> str:
    transport = _TRANSPORTS.get(scheme)
    if transport is None:
        raise _refused(url, f"the {scheme}:// transport is not allowed (file, http, https, ssh are)")
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is no number
    except ValueError as exc:
        raise _refused(url, str(exc)) from exc
    if transport == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise _refused(url, "a file:// URL must name an absolute local path (file:///path)")
    elif not hostname or hostname.startswith("-"):
        raise _refused(url, "no host, or a host that looks like an option")
    return transport


def check_url(url: str) -> None:
    """GitFailed with a one-line reason for a URL orch refuses (see `protocol_overrides`)."""
    _transport(url)


def protocol_overrides(url: str) -> list[tuple[str, str]]:
    """`-c` pairs allowing ONLY this URL's transport (after SAFE_CONFIG, so they win): an absolute path or file://
    → file; http(s):// → that one; ssh:// or scp-like → ssh, with an ssh that never prompts. Anything else
    (ext::, fd::, a relative path, '-...') → GitFailed("unsupported repository URL ...")."""
    transport = _transport(url)
    pairs = [(f"protocol.{transport}.allow", "always")]
    if transport == "ssh":
        pairs.append(("core.sshCommand", SSH_COMMAND))
    if transport == "file":
        # A checkout the user owns, read by a worker running as root: git would call its ownership dubious.
        pairs.append(("safe.directory", _local_path(url)))
    return pairs


def _local_path(url: str) -> str:
    return unquote(urlsplit(url).path) if url.startswith("file:") else url


@dataclass(frozen=True)
class RemoteAccess:
    """How one git command reaches a URL: the URL as written in argv (never with a password), the `-c` pairs and
    the environment it needs."""

    argv_url: str
    config: tuple[tuple[str, str], ...]
    env: dict[str, str] = field(default_factory=dict)
    local: bool = False  # the file transport: git runs receive-pack / upload-pack in that repository itself

    def options(self, subcommand: str) -> list[str]:
        """What `subcommand` must be given to reach a local repository without obeying it: the other end runs in
        that repository, with its config, so its hooks (an agent could have written some, where the repository is
        a plan's shared workdir) are turned off by a `-c` of its own, as is its automatic gc."""
        if not self.local:
            return []
        git = shutil.which("git", path=os.pathsep.join(p for p in os.get_exec_path() if os.path.isabs(p))) or "git"
        quiet = f"{shlex.quote(git)} -c core.hooksPath=/dev/null -c receive.autogc=false -c gc.auto=0"
        if subcommand == "push":
            return [f"--receive-pack={quiet} receive-pack"]
        if subcommand in ("fetch", "ls-remote"):
            return [f"--upload-pack={quiet} upload-pack"]
        return []


def remote_access(url: str) -> RemoteAccess:
    """The argv URL, `-c` pairs and environment for a command reaching `url` (see `protocol_overrides`)."""
    config = protocol_overrides(url)
    env: dict[str, str] = {}
    if _transport(url) == "ssh":
        env["GIT_SSH_COMMAND"] = SSH_COMMAND  # the environment's value beats core.sshCommand (set to false)
    parts = urlsplit(url) if _SCHEME.match(url) else None
    web = parts is not None and _transport(url) in ("http", "https")
    if web:
        config.append(("http.followRedirects", "false"))  # a token never follows a redirect to another host
    if parts is not None and parts.password is not None and web:
        env[_PASSWORD_ENV] = unquote(parts.password)
        env[_HOST_ENV] = parts.netloc.rpartition("@")[2]
        config.append(("credential.helper", _CREDENTIAL_HELPER))
        return RemoteAccess(_without_password(parts), tuple(config), env)
    stored = _stored_credential(parts) if parts is not None and web else None
    if stored is not None and parts is not None:
        env[_USER_ENV], env[_PASSWORD_ENV] = stored
        env[_HOST_ENV] = parts.netloc.rpartition("@")[2]
        config.append(("credential.helper", _STORED_HELPER))
    return RemoteAccess(url, tuple(config), env, local=_transport(url) == "file")


def _stored_credential(parts: SplitResult) -> tuple[str, str] | None:
    """The user and password ORCH_GIT_CREDENTIALS holds for this URL (git-credentials' format: one
    `https://user:token@host[/path]` a line; the first whose scheme, host and port match, and whose path is a
    prefix of the URL's, wins), or None."""
    from orch.settings import get_settings  # lazy: only http(s) remotes need it

    path = get_settings().git_credentials
    if path is None:
        return None
    for line in _credential_lines(path):
        stored = urlsplit(line)
        if (
            (stored.scheme, stored.hostname, stored.port) == (parts.scheme, parts.hostname, parts.port)
            and _under(parts.path, stored.path)
            and stored.password is not None
        ):
            return unquote(stored.username or ""), unquote(stored.password)
    return None


def _under(path: str, prefix: str) -> bool:
    """Whether URL path `path` is `prefix` or below it (`/org` covers `/org/app.git`, not `/organisation`)."""
    prefix = prefix.rstrip("/")
    return not prefix or path == prefix or path.startswith(prefix + "/")


def _credential_lines(path: Path) -> list[str]:
    """The credentials file's lines: a regular file of this user's that nobody else may read (it holds tokens)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise GitFailed(f"ORCH_GIT_CREDENTIALS={path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_CREDENTIALS_BYTES:
            raise GitFailed(f"ORCH_GIT_CREDENTIALS={path}: not a regular file of at most {MAX_CREDENTIALS_BYTES} bytes")
        if info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise GitFailed(f"ORCH_GIT_CREDENTIALS={path}: readable by others or not yours (chmod 600 it)")
        text = file.read(MAX_CREDENTIALS_BYTES).decode("utf-8", "replace")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _without_password(parts: SplitResult) -> str:
    host = parts.netloc.rpartition("@")[2]
    user = parts.netloc.rpartition("@")[0].partition(":")[0]
    return parts._replace(netloc=f"{user}@{host}" if user else host).geturl()
