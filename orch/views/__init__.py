"""Read-only output, a module per command: what `orch status`, `orch watch` and `orch run` (progress), `orch logs`,
`orch report` and `orch graph` (mermaid) show; format.py and terminal.py are what they share."""
