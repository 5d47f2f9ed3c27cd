"""Side services and process helpers: the exporter, `orch check`, the broker probe, Flower, liveness,
the embedded cluster of `orch run`, process hardening, host isolation and the hardened git."""
