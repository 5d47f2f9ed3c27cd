"""What the single beat runs: its scheduler and the reconcile-and-dispatch tick."""
