"""orch: runs plans — DAGs of AI coding-agent tasks — on Celery workers, with an SQL store as the truth."""

__version__ = "0.1.0"
