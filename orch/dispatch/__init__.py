"""Applying decisions: one store transaction, then the broker (reconcile, publish, reap, trip the breaker)."""
