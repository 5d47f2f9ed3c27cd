"""What a worker host runs: the Celery task adapter, the agent executors, process supervision."""
