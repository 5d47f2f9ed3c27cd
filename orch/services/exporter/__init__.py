"""`orch exporter`: Prometheus metrics read from the store."""
