"""How an agent process starts: the environment it is granted, the user it runs as, and the sandbox around it.

An agent may have been turned by what it reads (a README, an issue, a dependency), so it gets only what it is
granted:
- its environment is an allow-list (`grant.agent_environment`): PATH, a per-attempt HOME and TMPDIR, the locale,
  the attempt's ids, its agent type's `secrets` and `env` variables; nothing else of the worker's;
- where the worker runs as root, it runs as an unprivileged user (ORCH_AGENT_USER, default `orch-agent`);
- under bubblewrap (ORCH_SANDBOX=bwrap, or auto where it works) it sees the system read-only, its workdir and its
  per-attempt folder read-write, a private /tmp and /run, new pid/ipc/uts namespaces (the worker and other agents
  are invisible), and nothing of ORCH_HOME, the store, orch's configuration or the worker user's home folder
  (but for the programs it needs from there); with `network: none` it has no network at all.

`grant` holds what an agent is given (its environment, its per-attempt folder), `workdir` where it may work,
`bwrap` what bubblewrap shows it, and `launch` starts it. Nothing here reads the store: the runner hands in the
attempt's context and the worker's settings.
"""
