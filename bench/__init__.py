"""orch's benchmark against raw Celery: `python -m bench.run` (`make bench`). See bench/README.md."""
