"""Read-only output: what `orch status`, `orch watch`, `orch run`, `orch report` and `orch graph` show."""
