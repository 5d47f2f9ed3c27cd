"""Every git command orch itself runs goes through this package: never a shell, a minimal environment without
orch's secrets, a timeout, and config overrides for every program-naming key that can be named (`command`).

A repository an agent can write is untrusted: its `.git/config` may name programs git would run (`core.fsmonitor`,
`filter.<driver>.clean`, `diff.<driver>.textconv`, hooks, `include.path` to any file...). Keys with a driver name
in them cannot all be overridden by name, so git reads such a worktree only through
`worktree_view.open_worktree_view`: a private git dir in a temporary folder with a config of our own, a copy of
the index, HEAD resolved by reading files (`repository`), and the real object store as data. No git command ever
runs in discovery mode on an untrusted repository.
"""
