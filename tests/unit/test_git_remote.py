"""Which repository URLs orch accepts, and the one transport each is allowed (no git run, no network)."""

from __future__ import annotations

import pytest

from orch.services.git import command
from orch.services.git.command import GitFailed
from orch.services.git.remote import SSH_COMMAND, check_url, display_url, protocol_overrides, remote_access


@pytest.mark.parametrize(
    ("url", "transport"),
    [
        ("/srv/repos/app", "file"),
        ("/srv/repos/app.git", "file"),
        ("file:///srv/repos/app.git", "file"),
        ("https://github.com/org/app.git", "https"),
        ("http://git.local:8080/app", "http"),
        ("ssh://git@github.com/org/app.git", "ssh"),
        ("ssh://git@[::1]:2222/app", "ssh"),
        ("git@github.com:org/app.git", "ssh"),
        ("host.example:app", "ssh"),
    ],
)
def test_each_url_allows_only_its_own_transport(url: str, transport: str) -> None:
    check_url(url)
    pairs = protocol_overrides(url)
    allowed = [key for key, value in pairs if key.startswith("protocol.")]
    assert allowed == [f"protocol.{transport}.allow"] and dict(pairs)[allowed[0]] == "always"
    assert ("core.sshCommand", SSH_COMMAND) in pairs if transport == "ssh" else "core.sshCommand" not in dict(pairs)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ext::sh -c touch% /tmp/pwned", "transport helpers"),
        ("fd::3", "transport helpers"),
        ("fd::3,4/x", "transport helpers"),
        ("-uhttps://example.com/x", "starts with '-'"),
        ("--upload-pack=touch /tmp/x", "starts with '-'"),
        ("relative/path", "relative path"),
        ("./here", "relative path"),
        ("app", "relative path"),
        ("", "empty"),
        ("/srv/app\n--x", "control character"),
        ("git://example.com/app", "git:// transport"),
        ("ftp://example.com/app", "ftp:// transport"),
        ("ext://x", "ext:// transport"),
        ("file://host/srv/app", "absolute local path"),
        ("https:///nohost", "no host"),
        ("ssh://-oProxyCommand=touch%20x/app", "no host"),
        ("-oProxyCommand=x:app", "starts with '-'"),
        ("user@-oProxyCommand=x:app", "ssh address"),
        ("https://host:notaport/app", "unsupported repository URL"),
    ],
)
def test_refused_urls_say_why(url: str, why: str) -> None:
    with pytest.raises(GitFailed, match="unsupported repository URL") as refused:
        check_url(url)
    assert why in str(refused.value)
    with pytest.raises(GitFailed):
        protocol_overrides(url)


def test_a_password_is_masked_and_never_reaches_argv() -> None:
    url = "https://deploy:s3cret%40pass@git.example.com/org/app.git"
    assert "s3cret" not in display_url(url) and "git.example.com/org/app.git" in display_url(url)
    access = remote_access(url)
    assert access.argv_url == "https://deploy@git.example.com/org/app.git"
    argv = command.git_argv(["ls-remote", access.argv_url], access.config)
    assert not any("s3cret" in item for item in argv)
    assert access.env["ORCH_GIT_URL_PASSWORD"] == "s3cret@pass"
    with pytest.raises(GitFailed) as refused:
        check_url("ftp://user:s3cret@example.com/x")
    assert "s3cret" not in str(refused.value)


def test_the_overrides_come_after_safe_config_so_they_win() -> None:
    argv = command.git_argv(["fetch", "/srv/app"], protocol_overrides("/srv/app"))
    assert argv.index("protocol.file.allow=always") > argv.index("protocol.file.allow=never")
    assert argv.index("protocol.file.allow=always") < argv.index("fetch")
    assert ("safe.directory", "/srv/app") in protocol_overrides("/srv/app")
    assert ("safe.directory", "/srv/my app") in protocol_overrides("file:///srv/my%20app")
    assert remote_access("git@github.com:org/app.git").env == {"GIT_SSH_COMMAND": SSH_COMMAND}
