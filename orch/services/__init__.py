"""Side services and process helpers: the exporter, `orch check`, the broker probe, Flower, liveness, `orch run`
(local_run.py) and its embedded cluster, the process helpers, process hardening, host isolation and the hardened
git."""
